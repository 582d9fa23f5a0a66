"""Metadata handling is total: whatever the EXIF, XMP or JFIF segments say, an image is served
(orientation applied where it can be read, every piece of metadata dropped) or refused with a 400
naming it. Files are built by byte surgery; pytest turns warnings into errors, so a Pillow warning
about corrupt metadata that escaped would fail these tests like a 500 would."""

from __future__ import annotations

import struct

import pytest

from tests.media.images import (
    XMP_PACKET,
    XMP_PREFIX,
    encode,
    exif_bytes,
    exif_segment,
    gradient,
    jfif_units,
    jpeg_segment,
    with_segments,
)
from tests.media.test_prepare import WHERE, prepare
from vlmserve.errors import MediaError

JPEG = encode(gradient(64, 48), "JPEG")
ROTATED = (48, 64)  # orientation 6 applied
UPRIGHT = (64, 48)

# name → (file, expected size when served)
CASES: dict[str, tuple[bytes, tuple[int, int]]] = {
    "two EXIF blocks, the first wins": (
        with_segments(JPEG, exif_segment(exif_bytes(6, gps=True)), exif_segment(exif_bytes(3))),
        ROTATED,
    ),
    "EXIF with an IFD past the end": (
        with_segments(JPEG, exif_segment(b"MM\x00*\x00\x00\x00\x08\xff\xff")),
        UPRIGHT,
    ),
    "EXIF entry pointing past the segment": (
        with_segments(
            JPEG,
            exif_segment(
                b"II*\x00\x08\x00\x00\x00\x01\x00"
                + struct.pack("<HHII", 0x010F, 2, 4000, 0x7FFFFFF0)
                + b"\x00\x00\x00\x00"
            ),
        ),
        UPRIGHT,
    ),
    "empty EXIF block": (with_segments(JPEG, exif_segment(b"")), UPRIGHT),
    "EXIF that is not TIFF": (with_segments(JPEG, exif_segment(b"garbage" * 5)), UPRIGHT),
    "XMP padded with spaces": (
        with_segments(
            JPEG,
            jpeg_segment(0xE1, XMP_PREFIX + XMP_PACKET + b" " * 4000 + b'<?xpacket end="w"?>'),
        ),
        ROTATED,
    ),
    "XMP padded with NULs": (
        with_segments(JPEG, jpeg_segment(0xE1, XMP_PREFIX + XMP_PACKET + b"\x00" * 64)),
        ROTATED,
    ),
    "XMP without its prefix": (with_segments(JPEG, jpeg_segment(0xE1, XMP_PACKET)), UPRIGHT),
    "XMP that is not UTF-8": (
        with_segments(JPEG, jpeg_segment(0xE1, XMP_PREFIX + b"\xff\xfe<\x00x\x00" * 40)),
        UPRIGHT,
    ),
    "XMP cut mid-element": (
        with_segments(JPEG, jpeg_segment(0xE1, XMP_PREFIX + XMP_PACKET[:90])),
        UPRIGHT,
    ),
    "EXIF, XMP and EXIF again": (
        with_segments(
            JPEG,
            exif_segment(exif_bytes(6)),
            jpeg_segment(0xE1, XMP_PREFIX + XMP_PACKET),
            exif_segment(exif_bytes(8)),
        ),
        ROTATED,
    ),
    "JFIF density in centimetres": (jfif_units(JPEG, 2, (118, 118)), UPRIGHT),
    "JFIF density in centimetres, zero": (jfif_units(JPEG, 2, (0, 0)), UPRIGHT),
    "JFIF unknown density unit": (jfif_units(JPEG, 9, (1, 65535)), UPRIGHT),
    "a comment and an Adobe APP14": (
        with_segments(JPEG, jpeg_segment(0xFE, b"\xff" * 50), jpeg_segment(0xEE, b"Adobe")),
        UPRIGHT,
    ),
    "an ICC profile that is not one": (
        with_segments(JPEG, jpeg_segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + b"\x00" * 200)),
        UPRIGHT,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unusual_metadata_is_served_without_it_or_refused_naming_the_image(name: str) -> None:
    data, size = CASES[name]
    try:
        prepared = prepare(data)
    except MediaError as exc:
        assert WHERE in exc.message
        return
    assert prepared.size == size
    assert prepared.image.info == {}
    assert not prepared.image.getexif()
