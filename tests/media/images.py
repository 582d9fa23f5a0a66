"""Image fixtures, generated with Pillow in the tests (no binary files in the repository)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def gradient(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth, asymmetric picture (orientation mistakes show), with a little texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 11.0) + rng.normal(0, 2, (height, width))
    rgb = np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)
    rgb[: height // 4, : width // 4] = (255, 0, 0)  # a red corner marks the top left
    im = Image.fromarray(rgb, "RGB")
    return im if mode == "RGB" else im.convert(mode)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def exif_bytes(orientation: int | None = None, gps: bool = False) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif[0x010F] = "SecretCam"  # Make
    if gps:
        exif[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 29.99), 3: "E", 4: (2.0, 17.0, 40.2)}
    return exif.tobytes()


def oriented_pair(orientation: int, fmt: str = "PNG") -> tuple[bytes, Image.Image]:
    """An image file whose stored pixels, transformed by ``orientation``, look like ``upright``.

    Built as the camera does: store the inverse transform of the upright picture and tag it.
    """
    upright = gradient(64, 48)
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    params: dict[str, object] = {"quality": 95} if fmt == "JPEG" else {}
    return encode(stored, fmt, exif=exif_bytes(orientation), **params), upright


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)


def png16_rgba(width: int, height: int) -> bytes:
    """A 16-bit RGBA PNG with a transparent left half (Pillow cannot write one)."""
    px = np.zeros((height, width, 4), dtype=">u2")
    px[..., 0] = 65535  # red
    px[..., 3] = 65535
    px[:, : width // 2, 3] = 0  # left half fully transparent
    raw = b"".join(b"\x00" + px[row].tobytes() for row in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def animated(fmt: str, frames: int = 3) -> bytes:
    images = [gradient(32, 32, seed=i).rotate(30 * i) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def bmp() -> bytes:
    return encode(gradient(8, 8), "BMP")


def tiff() -> bytes:
    return encode(gradient(8, 8), "TIFF")


def linear_rgb_icc() -> bytes:
    """A minimal ICC v2 matrix/shaper RGB profile with sRGB primaries and gamma 1.0 (linear
    light), so converting it to sRGB visibly brightens mid-greys. Pillow can only create sRGB."""

    def xyz(x: float, y: float, z: float) -> bytes:
        return (
            b"XYZ " + b"\x00" * 4 + b"".join(struct.pack(">i", round(v * 65536)) for v in (x, y, z))
        )

    curve = b"curv" + b"\x00" * 4 + struct.pack(">I", 1) + struct.pack(">H", 256)  # gamma 1.0
    desc_text = b"linear test\x00"
    desc = (
        b"desc"
        + b"\x00" * 4
        + struct.pack(">I", len(desc_text))
        + desc_text
        + b"\x00" * 8
        + b"\x00" * 3
        + b"\x00" * 67
    )
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, bodies = b"", b""
    for sig, body in tags:
        body += b"\x00" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(bodies), len(body))
        bodies += body
    size = offset + len(bodies)
    header = (
        struct.pack(">I", size)
        + b"none"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + b"\x00" * 12
        + b"acsp"
        + b"\x00" * 24
        + struct.pack(">i", 0)
        + struct.pack(">iii", round(0.9642 * 65536), 65536, round(0.8249 * 65536))
        + b"\x00" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + bodies


# --- JPEG byte surgery (what piexif and exiftool do): segments inserted after SOI ---------------

XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_PACKET = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def jpeg_segment(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def with_segments(jpeg: bytes, *segments: bytes) -> bytes:
    """``jpeg`` with ``segments`` right after its SOI marker (before its own APP0/APP1)."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def exif_segment(exif: bytes) -> bytes:
    return jpeg_segment(0xE1, b"Exif\x00\x00" + exif)


def jfif_units(jpeg: bytes, units: int, density: tuple[int, int] = (28, 28)) -> bytes:
    """``jpeg`` (with a JFIF APP0) with its density unit byte and density rewritten."""
    at = jpeg.index(b"JFIF\x00") + 7
    out = bytearray(jpeg)
    out[at] = units
    out[at + 1 : at + 5] = struct.pack(">HH", *density)
    return bytes(out)
