"""Decoding and sanitizing one image: sniff the format, refuse what we do not accept, open the
header, and turn any mode into plain sRGB RGB pixels with no metadata.

Pillow does the decoding; every error it can raise on hostile bytes is translated here
(``open_image`` / ``load_image``, and ``pillow_errors`` around the whole pipeline), never let
through as a 500. Metadata is read only to apply the orientation and to report what was dropped:
reading it never fails an image (unreadable metadata is metadata we drop anyway), whatever Pillow
raises or warns about (a warning is an exception where warnings are errors).
"""

from __future__ import annotations

import functools
import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from vlmserve.errors import MediaError, UnsupportedContentError, VlmserveError

SUPPORTED: Final = ("JPEG", "PNG", "GIF", "WEBP")
_PIL_FORMATS: Final = {"JPEG": ["JPEG", "MPO"], "PNG": ["PNG"], "GIF": ["GIF"], "WEBP": ["WEBP"]}
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    MemoryError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised when warnings are errors (tests)
)
ORIENTATION_TAG: Final = 0x0112
GPS_IFD: Final = 0x8825
_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Info keys that are metadata about the picture (dropped and reported); the rest is structure.
_METADATA_KEYS: Final = {
    "exif": "exif",
    "icc_profile": "icc_profile",
    "xmp": "xmp",
    "XML:com.adobe.xmp": "xmp",
    "comment": "comment",
    "photoshop": "photoshop",
    "dpi": "dpi",
}
_PNG_TEXT_SKIP: Final = {"transparency", "gamma", "srgb", "chromaticity", "aspect", "bbox"}


def sniff_format(head: bytes) -> str | None:
    """The accepted format the bytes start with ("JPEG", "PNG", "GIF", "WEBP"), else None."""
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def describe_content(head: bytes) -> str:
    """What unsupported bytes look like, for the error message."""
    text = head[:256].lstrip().lower()
    brand = head[8:12] if head[4:8] == b"ftyp" else b""
    checks: list[tuple[bool, str]] = [
        (head[:2] == b"BM", "a BMP image"),
        (head[:4] in (b"II*\x00", b"MM\x00*"), "a TIFF image"),
        (head[:4] == b"\x00\x00\x01\x00", "an ICO icon"),
        (brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"), "a HEIC image"),
        (brand in (b"avif", b"avis"), "an AVIF image"),
        (bool(brand), "an MP4/MOV video"),
        (head[:4] == b"\x1aE\xdf\xa3", "a WebM/MKV video"),
        (head[:2] == b"\xff\x0a" or head[4:8] == b"JXL ", "a JPEG XL image"),
        (head[4:8] == b"jP  " or head[:4] == b"\xffO\xffQ", "a JPEG 2000 image"),
        (head[:4] == b"8BPS", "a Photoshop PSD file"),
        (head[:5] == b"%PDF-", "a PDF document"),
        (head[:4] == b"PK\x03\x04", "a ZIP archive"),
        (b"<svg" in text, "an SVG image"),
        (text.startswith((b"<!doctype html", b"<html")), "an HTML page"),
        (text.startswith((b"{", b"[")), "JSON text"),
    ]
    for matched, what in checks:
        if matched:
            return what
    if not head:
        return "no data (0 bytes)"
    return f"unrecognized data starting with 0x{head[:8].hex()}"


def check_supported(head: bytes, where: str) -> str:
    fmt = sniff_format(head)
    if fmt is None:
        raise UnsupportedContentError(
            f"{where} is {describe_content(head)}; images must be JPEG, PNG, GIF or WebP "
            "(convert it, e.g. to PNG or JPEG)"
        )
    return fmt


def open_image(data: bytes, fmt: str, where: str) -> Image.Image:
    """Parse the header only (no pixels decoded yet)."""
    try:
        return Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(
            f"{where} declares more pixels than this server decodes ({exc}); send a smaller image",
            code="image_too_large",
        ) from None
    except (*_DECODE_ERRORS, UnidentifiedImageError) as exc:
        raise corrupt(where, fmt, exc) from None


def check_still(im: Image.Image, fmt: str, where: str) -> None:
    """Refuse animations; a multi-picture JPEG (MPO) is a still image (its first picture)."""
    if fmt == "JPEG":
        return
    try:
        frames = 1 + bool(getattr(im, "is_animated", False)) if fmt == "GIF" else _n_frames(im)
    except _DECODE_ERRORS as exc:
        raise corrupt(where, fmt, exc) from None
    if frames > 1:
        name = {"PNG": "an animated PNG (APNG)", "GIF": "an animated GIF"}.get(
            fmt, "an animated WebP"
        )
        raise UnsupportedContentError(
            f"{where} is {name}; only still images are accepted (send one frame as PNG or JPEG)"
        )


def _n_frames(im: Image.Image) -> int:
    frames = getattr(im, "n_frames", 1)
    return frames if isinstance(frames, int) else 1


def load_image(im: Image.Image, fmt: str, where: str) -> None:
    try:
        im.load()
    except _DECODE_ERRORS as exc:
        raise corrupt(where, fmt, exc) from None


@contextmanager
def pillow_errors(where: str, fmt: str) -> Iterator[None]:
    """The one boundary around decoding: anything Pillow (or lcms, numpy) raises on hostile bytes
    that the steps did not translate themselves is a 400 naming the image, never a 500."""
    try:
        yield
    except VlmserveError:
        raise
    except Exception as exc:  # incl. struct.error, RecursionError, warnings raised as errors
        raise corrupt(where, fmt, exc) from None


def corrupt(where: str, fmt: str, exc: BaseException) -> MediaError:
    reason = str(exc) or type(exc).__name__
    return MediaError(
        f"{where} could not be decoded as {fmt}: the file is truncated or corrupt ({reason}); "
        "send the complete, unmodified image file",
        code="invalid_image",
    )


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable (the pixels are still valid)."""
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # unreadable EXIF/XMP: no orientation to apply (all of it is dropped)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def transpose(im: Image.Image, orient: int) -> Image.Image:
    method = _TRANSPOSE.get(orient)
    return im if method is None else im.transpose(method)


def metadata_keys(im: Image.Image) -> tuple[str, ...]:
    """The metadata the file carries (all of it is dropped): exif, gps, xmp, icc_profile, ..."""
    found: set[str] = set()
    for key, value in im.info.items():
        if not isinstance(key, str):
            continue
        if key in _METADATA_KEYS:
            found.add(_METADATA_KEYS[key])
        elif im.format == "PNG" and isinstance(value, str) and key not in _PNG_TEXT_SKIP:
            found.add(f"text:{key}")
    found.update(_exif_keys(im))
    return tuple(sorted(found))


def _exif_keys(im: Image.Image) -> set[str]:
    try:
        exif = im.getexif()
        keys = {"exif"} if len(exif) else set()
        if exif.get_ifd(GPS_IFD):
            keys.add("gps")
    except Exception:  # unreadable EXIF is still EXIF, and dropped
        return {"exif"}
    return keys


def to_working_mode(im: Image.Image) -> Image.Image:
    """Any mode → one Pillow resizes and lcms converts well: RGB, RGBA, L, CMYK."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _wide_to_l(im)
    if "transparency" in im.info or mode in ("LA", "PA", "La", "RGBa"):
        return im.convert("RGBA")
    if mode in ("RGB", "RGBA", "L", "CMYK"):
        return im
    return im.convert("RGB")  # P, 1, YCbCr, LAB, HSV, ...


def _wide_to_l(im: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) grey → 8-bit by scaling; Pillow's own conversion clips at 255."""
    values = np.asarray(im).astype(np.float32)
    wide = im.mode != "F" or values.max(initial=0.0) > 1.0
    values = values / 257.0 if wide else values * 255.0  # 0..65535 or 0..1 → 0..255
    return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), mode="L")


def to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert from the embedded ICC profile to sRGB (a no-op for sRGB or no profile)."""
    if not icc or im.mode not in ("RGB", "RGBA", "L", "CMYK"):
        return im
    out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
    transform = _transform_to_srgb(icc, im.mode, out_mode)
    if transform is None:
        return im if im.mode != "CMYK" else im.convert("RGB")
    return ImageCms.applyTransform(im, transform) or im


@functools.lru_cache(maxsize=32)
def _transform_to_srgb(
    icc: bytes, in_mode: str, out_mode: str
) -> ImageCms.ImageCmsTransform | None:
    """None when the profile is sRGB already or unusable (the pixels are then taken as sRGB)."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if in_mode != "CMYK" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return None
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        # NOCACHE: lcms's one-pixel cache is not safe when pool threads share a transform
        flags = ImageCms.Flags.NOCACHE
        return ImageCms.buildTransform(source, srgb, in_mode, out_mode, flags=flags)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def flatten(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite transparency on ``background``; any mode → RGB."""
    if im.mode == "RGBA":
        base = Image.new("RGBA", im.size, (*background, 255))
        return Image.alpha_composite(base, im).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")
