"""``media.sniff``: what an upload is, from its first bytes (never from its name or header)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.samples import VIDEOS, animated, image, video
from vlmserve.errors import UnsupportedContentError
from vlmserve.media.sniff import SNIFF_BYTES, check_still_upload, sniff_upload

WHERE = "the uploaded file"


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_images_are_recognised(fmt: str, content_type: str) -> None:
    sniffed = sniff_upload(image(fmt)[:SNIFF_BYTES], WHERE)
    assert (sniffed.kind, sniffed.format, sniffed.content_type) == ("image", fmt, content_type)


@pytest.mark.parametrize("kind", sorted(VIDEOS))
def test_videos_made_by_ffmpeg_are_recognised_by_container(kind: str) -> None:
    sniffed = sniff_upload(video(kind)[:SNIFF_BYTES], WHERE)
    assert (sniffed.kind, sniffed.format, sniffed.content_type) == ("video", kind, VIDEOS[kind][2])


def test_h264_mp4_with_avc1_brand_is_mp4() -> None:
    head = b"\x00\x00\x00\x18ftypavc1\x00\x00\x00\x00avc1isom"
    assert sniff_upload(head, WHERE).format == "MP4"


def test_old_quicktime_file_without_ftyp_is_mov() -> None:
    head = b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat" + b"\x00" * 32
    assert sniff_upload(head, WHERE).format == "MOV"


@pytest.mark.parametrize(
    ("head", "found"),
    [
        (b"", "empty (0 bytes)"),
        (b"%PDF-1.7\n%...", "a PDF document"),
        (b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A isom", "MPEG-4 audio"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "a HEIC image"),
        (b"\x00\x00\x00\x14ftypcrx \x00\x00\x00\x01crx ", "unknown kind (brand 'crx')"),
        (b"\x1aE\xdf\xa3\x8aB\x82\x87notmkv!", "DocType 'notmkv!'"),
        (b"\x1aE\xdf\xa3\x84B\x86\x81\x01", "not a valid Matroska or WebM file"),
        (b"\x1aE\xdf\xa3\x00", "damaged header"),
        (b"ID3\x04\x00\x00\x00\x00", "unrecognized data"),
    ],
)
def test_unsupported_content_is_refused_naming_what_it_is(head: bytes, found: str) -> None:
    with pytest.raises(UnsupportedContentError, match=WHERE) as caught:
        sniff_upload(head, WHERE)
    assert found in caught.value.message
    assert caught.value.code == "unsupported_content_type"


def test_container_header_cut_off_is_refused_for_a_whole_file() -> None:
    head = video("MKV")[:20]  # the DocType comes later
    with pytest.raises(UnsupportedContentError, match="cut off"):
        sniff_upload(head, WHERE)


def test_container_header_cut_off_is_provisional_for_a_download_prefix() -> None:
    assert sniff_upload(video("MKV")[:20], WHERE, complete=False).format == "MKV"
    assert sniff_upload(video("MP4")[:20], WHERE, complete=False).format == "MP4"


@pytest.mark.parametrize(
    ("fmt", "name"), [("GIF", "animated GIF"), ("PNG", "APNG"), ("WEBP", "animated WebP")]
)
def test_animated_images_are_refused_after_upload(tmp_path: Path, fmt: str, name: str) -> None:
    path = tmp_path / "upload.part"
    path.write_bytes(animated(fmt))
    sniffed = sniff_upload(path.read_bytes()[:SNIFF_BYTES], WHERE)
    with pytest.raises(UnsupportedContentError, match=name):
        check_still_upload(path, sniffed, WHERE)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "JPEG"])
def test_still_images_pass_the_animation_check(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "upload.part"
    path.write_bytes(image(fmt))
    check_still_upload(path, sniff_upload(path.read_bytes()[:SNIFF_BYTES], WHERE), WHERE)


def test_corrupt_png_error_does_not_show_server_paths(tmp_path: Path) -> None:
    path = tmp_path / "secret-dir" / "upload.part"
    path.parent.mkdir()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(Exception, match="could not be decoded as PNG") as caught:
        check_still_upload(path, sniff_upload(path.read_bytes(), WHERE), WHERE)
    assert "secret-dir" not in str(caught.value)
