"""What an upload is, from its first bytes: the images and videos ``POST /v1/files`` stores.

Images as ``image.sniff_format`` sees them (JPEG, PNG, WebP, GIF; animations are refused by
``check_still_upload`` once the whole file is on disk). Videos by container: ISO base media files by
their ``ftyp`` brands (MP4; ``qt  `` is QuickTime MOV, as are old QuickTime files that start with a
``moov``/``mdat``/``wide`` atom), EBML files by the header's DocType (``matroska`` is MKV, ``webm``
is WebM). Whether a video really decodes is the video intake's business, at use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from PIL import Image, UnidentifiedImageError

from vlmserve.errors import UnsupportedContentError
from vlmserve.media.image import check_still, corrupt, describe_content, sniff_format

SNIFF_BYTES: Final = 4096  # enough for any ftyp box or EBML header seen in practice
ACCEPTED: Final = "JPEG, PNG, WebP or static GIF images, or MP4, MOV, MKV or WebM videos"

_IMAGE_TYPES: Final = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
_VIDEO_TYPES: Final = {
    "MP4": "video/mp4",
    "MOV": "video/quicktime",
    "MKV": "video/x-matroska",
    "WEBM": "video/webm",
}
_MP4_BRANDS: Final = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9"}
    | {b"mp41", b"mp42", b"mp71", b"avc1", b"dash", b"M4V ", b"M4VH", b"M4VP", b"mmp4", b"MSNV"}
    | {b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"f4v ", b"XAVC", b"NDAS"}
)
_AUDIO_BRANDS: Final = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
_IMAGE_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
)
_QUICKTIME_ATOMS: Final = frozenset({b"moov", b"mdat", b"wide", b"pnot"})
_EBML_MAGIC: Final = b"\x1a\x45\xdf\xa3"
_DOCTYPE_ID: Final = 0x4282
_DOCTYPES: Final = {b"matroska": "MKV", b"webm": "WEBM"}


@dataclass(frozen=True, slots=True)
class Sniffed:
    kind: Literal["image", "video"]
    format: str  # "JPEG", "PNG", "GIF", "WEBP", "MP4", "MOV", "MKV", "WEBM"
    content_type: str


class _CutOff(Exception):  # noqa: N818 - a signal, not an error
    """The header runs past the bytes we were given."""


class _Damaged(Exception):  # noqa: N818
    """An EBML number that is not valid."""


def sniff_upload(head: bytes, where: str, *, complete: bool = True) -> Sniffed:
    """The format of an upload whose first bytes are ``head`` (``SNIFF_BYTES`` or the whole file).

    ``complete=False``: ``head`` is only a prefix of a longer body (a download's first bytes), so a
    container header cut off at its end is accepted provisionally; sniff again with more bytes.
    Raises ``UnsupportedContentError`` naming what the bytes are.
    """
    if not head:
        raise _unsupported(where, "empty (0 bytes)")
    image = sniff_format(head)
    if image is not None:
        return Sniffed("image", image, _IMAGE_TYPES[image])
    try:
        found = _video_format(head)
    except _CutOff:
        if complete:
            raise _unsupported(where, "a video file whose container header is cut off") from None
        found = "MKV" if head[:4] == _EBML_MAGIC else "MP4"
    except _Damaged:
        found = "an EBML file with a damaged header (not a valid Matroska or WebM file)"
    if found in _VIDEO_TYPES:
        return Sniffed("video", found, _VIDEO_TYPES[found])
    raise _unsupported(where, found or describe_content(head))


def check_still_upload(path: Path, sniffed: Sniffed, where: str) -> None:
    """Refuse an animated GIF, PNG (APNG) or WebP, reading only headers and block structure
    (blocking: call it from a worker thread). Raises ``UnsupportedContentError`` or, for an image
    whose header does not parse, ``MediaError``."""
    if sniffed.format == "WEBP":
        with open(path, "rb") as file:
            header = file.read(21)
        if header[12:16] == b"VP8X" and len(header) > 20 and header[20] & 0x02:
            raise _unsupported(where, "an animated WebP; only still images are accepted")
        return
    if sniffed.format not in ("GIF", "PNG"):
        return
    try:
        with Image.open(path, formats=[sniffed.format]) as im:
            check_still(im, sniffed.format, where)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return  # too many pixels to judge here; chat intake refuses the size when it is used
    except UnidentifiedImageError:  # its message names our temp file
        raise corrupt(where, sniffed.format, ValueError("its header is not valid")) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise corrupt(where, sniffed.format, exc) from None


def _unsupported(where: str, found: str) -> UnsupportedContentError:
    return UnsupportedContentError(f"{where} is {found}; this server stores {ACCEPTED}")


def _video_format(head: bytes) -> str | None:
    """A key of ``_VIDEO_TYPES``, a description of what else it is, or None (not a container)."""
    if head[4:8] == b"ftyp":
        return _iso_format(head)
    if head[4:8] in _QUICKTIME_ATOMS:
        return "MOV"
    if head[:4] == _EBML_MAGIC:
        return _ebml_format(head)
    return None


def _iso_format(head: bytes) -> str:
    size = int.from_bytes(head[:4], "big")
    if size < 16 or size % 4 or size > SNIFF_BYTES:
        return "an ISO media file with a damaged 'ftyp' box"
    if len(head) < size:
        raise _CutOff
    major = head[8:12]
    brands = {major} | {head[i : i + 4] for i in range(16, size, 4)}
    if major == b"qt  ":
        return "MOV"
    if major in _AUDIO_BRANDS:
        return "an MPEG-4 audio file (M4A), not a video"
    if major in _IMAGE_BRANDS:
        return describe_content(head)  # "a HEIC image" / "an AVIF image"
    if brands & _MP4_BRANDS:
        return "MP4"
    if b"qt  " in brands:
        return "MOV"
    shown = major.decode("latin-1").strip() or "(empty)"
    return f"an ISO media file of an unknown kind (brand '{shown}')"


def _ebml_format(head: bytes) -> str:
    header_size, pos = _vint(head, 4, strip_marker=True)
    end = pos + header_size
    while pos < min(end, len(head)):
        element, pos = _vint(head, pos, strip_marker=False)
        size, pos = _vint(head, pos, strip_marker=True)
        if element == _DOCTYPE_ID:
            if pos + size > len(head):
                raise _CutOff
            doctype = head[pos : pos + size].rstrip(b"\x00")
            fmt = _DOCTYPES.get(doctype)
            shown = doctype.decode("latin-1", "replace")[:32]
            return fmt or f"an EBML file of DocType '{shown}' (not Matroska or WebM)"
        pos += size
    if end > len(head):
        raise _CutOff
    return "an EBML file without a DocType (not a valid Matroska or WebM file)"


def _vint(data: bytes, pos: int, *, strip_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at ``pos``: (value, position after it)."""
    if pos >= len(data):
        raise _CutOff
    first = data[pos]
    length = 9 - first.bit_length() if first else 9
    if length > 8:
        raise _Damaged
    if pos + length > len(data):
        raise _CutOff
    value = int.from_bytes(data[pos : pos + length], "big")
    if strip_marker:
        value &= (1 << (7 * length)) - 1
    return value, pos + length


def sniff_video(head: bytes, where: str, *, complete: bool = True) -> str:
    """The container of a video part ("MP4", "MOV", "MKV", "WEBM") from its first bytes (at
    least ``SNIFF_BYTES`` unless the file is shorter; ``complete=False``: only a prefix, as in
    ``sniff_upload``). Raises ``UnsupportedContentError`` naming what the bytes are instead (an
    image, a document, an audio file, ...)."""
    if not head:
        raise UnsupportedContentError(f"{where} is empty (0 bytes); send the video file")
    try:
        found = _video_format(head)
    except _CutOff:
        if not complete:
            return "MKV" if head[:4] == _EBML_MAGIC else "MP4"
        found = "a video file whose container header is cut off (truncated)"
    except _Damaged:
        found = "an EBML file with a damaged header (not a valid Matroska or WebM file)"
    if found in _VIDEO_TYPES:
        return found
    if sniff_format(head) is not None:
        found = f"a {sniff_format(head)} image (send images as image_url parts)"
    raise UnsupportedContentError(
        f"{where} is {found or describe_content(head)}; videos must be MP4, MOV, MKV or WebM"
    )
