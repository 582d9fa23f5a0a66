"""One image through the CPU pipeline: formats, animations, modes, orientation, metadata, limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from tests.media import images
from tests.media.images import encode, gradient
from vlmserve.errors import MediaError, UnsupportedContentError
from vlmserve.media.prepare import inspect_image, prepare_image, sizing_for
from vlmserve.media.types import Detail, ImagePolicy, PreparedImage
from vlmserve.settings import MediaSettings

WHERE = "image 1 (messages[0].content[0].image_url.url)"


def prepare(
    data: bytes, policy: ImagePolicy | None = None, detail: Detail = "auto", **settings: object
) -> PreparedImage:
    media = MediaSettings(**settings)  # type: ignore[arg-type]
    return prepare_image(data, sizing_for(policy or ImagePolicy(), detail, media), WHERE)


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_supported_formats_become_rgb(fmt: str) -> None:
    prepared = prepare(encode(gradient(40, 30), fmt))
    assert prepared.format == fmt
    assert prepared.image.mode == "RGB" and prepared.size == (40, 30)
    assert prepared.original_size == (40, 30)


def test_multi_picture_jpeg_is_a_still_jpeg() -> None:
    first, second = gradient(40, 30), gradient(40, 30, seed=1).rotate(90)
    mpo = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    prepared = prepare(mpo)
    assert prepared.format == "JPEG"
    assert mean_diff(prepared.image, first) < min(8, mean_diff(prepared.image, second))


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (images.bmp(), "BMP"),
        (images.tiff(), "TIFF"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "AVIF"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10", "ICO"),
        (b"%PDF-1.7\n", "PDF"),
        (b"<!DOCTYPE html><html></html>", "HTML"),
        (b"", "no data"),
        (b"\x01\x02\x03\x04garbage", "unrecognized data starting with 0x01020304"),
    ],
)
def test_unsupported_formats_name_what_was_found(data: bytes, found: str) -> None:
    with pytest.raises(UnsupportedContentError, match=found) as info:
        prepare(data)
    assert info.value.code == "unsupported_content_type"
    assert WHERE in info.value.message


@pytest.mark.parametrize(
    ("fmt", "name"), [("GIF", "animated GIF"), ("WEBP", "animated WebP"), ("PNG", "APNG")]
)
def test_animations_are_refused(fmt: str, name: str) -> None:
    with pytest.raises(UnsupportedContentError, match=name):
        prepare(images.animated(fmt))


def test_wrong_mime_is_decided_by_the_bytes() -> None:
    """A PNG sent as image/jpeg is a PNG: the sniffed bytes decide, consistently."""
    from vlmserve.media.sources import decode_data, parse_source

    png = encode(gradient(20, 10), "PNG")
    source = parse_source(images.data_url(png, "image/jpeg"), WHERE)
    assert prepare(decode_data(source, WHERE)).format == "PNG"  # type: ignore[arg-type]


def test_polyglot_is_judged_by_its_leading_bytes() -> None:
    """A GIF that is also an HTML page is a GIF; an HTML page hiding a PNG later is refused."""
    gif = encode(gradient(8, 8), "GIF") + b"<html><script>alert(1)</script></html>"
    assert prepare(gif).format == "GIF"
    html = b"<html>" + encode(gradient(8, 8), "PNG")
    with pytest.raises(UnsupportedContentError, match="HTML"):
        prepare(html)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    data, upright = images.oriented_pair(orientation)
    prepared = prepare(data)
    assert prepared.size == upright.size == prepared.original_size
    assert mean_diff(prepared.image, upright) < 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_resized_jpegs(orientation: int) -> None:
    data, upright = images.oriented_pair(orientation, "JPEG")
    prepared = prepare(data, ImagePolicy(low_longest_edge=32))
    assert prepared.size == (32, 24)
    assert mean_diff(prepared.image, upright.resize((32, 24), Image.Resampling.LANCZOS)) < 6


def test_gps_and_all_metadata_are_removed() -> None:
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description Creator="Jane"/></x:xmpmeta>'
    data = encode(
        gradient(40, 30),
        "JPEG",
        exif=images.exif_bytes(orientation=1, gps=True),
        comment=b"shot at home",
        xmp=xmp,
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
    )
    prepared = prepare(data)
    assert {"exif", "gps", "comment", "xmp", "icc_profile"} <= set(prepared.metadata_removed)
    assert prepared.image.info == {}
    assert len(prepared.image.getexif()) == 0
    for fmt in ("JPEG", "PNG", "WEBP"):
        saved = encode(prepared.image, fmt)
        assert b"SecretCam" not in saved and b"Jane" not in saved and b"GPS" not in saved
        assert not Image.open(io.BytesIO(saved)).getexif().get_ifd(images.GPS_IFD)


def test_png_text_chunks_are_reported_and_dropped() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    prepared = prepare(encode(gradient(10, 10), "PNG", pnginfo=info))
    assert "text:Author" in prepared.metadata_removed
    assert b"Jane" not in encode(prepared.image, "PNG")


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = gradient(40, 30).convert("CMYK")
    prepared = prepare(encode(cmyk, "JPEG", quality=95))
    assert prepared.image.mode == "RGB"
    assert mean_diff(prepared.image, cmyk.convert("RGB")) < 4


def test_progressive_jpeg_is_decoded() -> None:
    im = gradient(400, 300)
    prepared = prepare(
        encode(im, "JPEG", progressive=True, quality=95), ImagePolicy(low_longest_edge=100)
    )
    assert prepared.size == (100, 75)
    assert mean_diff(prepared.image, im.resize((100, 75), Image.Resampling.LANCZOS)) < 4


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 1)
    prepared = prepare(encode(im, "PNG", transparency=0))
    assert prepared.image.getpixel((0, 0)) == (255, 0, 0)
    assert prepared.image.getpixel((3, 1)) == (255, 255, 255)


def test_transparency_uses_the_background_setting() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    prepared = prepare(encode(rgba, "PNG"), background_rgb=(0, 128, 0))
    assert prepared.image.getpixel((1, 1)) == (0, 128, 0)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_transparent_gif_and_webp_are_composited(fmt: str) -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 8))
    params = {"lossless": True} if fmt == "WEBP" else {}
    prepared = prepare(encode(rgba, fmt, **params))
    assert prepared.image.getpixel((1, 1)) == (255, 255, 255)
    assert prepared.image.getpixel((6, 6)) == (0, 0, 255)


def test_16_bit_png_with_alpha_keeps_its_colours() -> None:
    prepared = prepare(images.png16_rgba(8, 4))
    assert prepared.image.getpixel((1, 1)) == (255, 255, 255)
    assert prepared.image.getpixel((6, 1)) == (255, 0, 0)


def test_16_bit_grey_png_is_scaled_not_clipped() -> None:
    grey = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    prepared = prepare(encode(grey, "PNG"))
    assert prepared.image.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["L", "LA", "1", "P", "RGBA", "I;16"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    assert prepare(encode(gradient(10, 10, mode=mode), "PNG")).image.mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_icc_profile_is_converted_to_srgb(fmt: str) -> None:
    im = Image.new("RGB", (16, 16), (128, 128, 128))
    params = {"lossless": True} if fmt == "WEBP" else {"quality": 100} if fmt == "JPEG" else {}
    converted = prepare(encode(im, fmt, icc_profile=images.linear_rgb_icc(), **params))
    assert "icc_profile" in converted.metadata_removed
    red, _, _ = converted.image.getpixel((8, 8))  # type: ignore[misc]
    assert abs(red - 188) <= 2  # linear 128 is sRGB 188


def test_srgb_profile_leaves_pixels_alone() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = Image.new("RGB", (4, 4), (128, 64, 32))
    assert prepare(encode(im, "PNG", icc_profile=srgb)).image.getpixel((0, 0)) == (128, 64, 32)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_files_are_a_400(fmt: str) -> None:
    data = encode(gradient(64, 64), fmt)
    with pytest.raises(MediaError, match="truncated or corrupt") as info:
        prepare(data[: len(data) // 2])
    assert info.value.status == 400 and info.value.code == "invalid_image"


def test_corrupt_header_is_a_400() -> None:
    with pytest.raises(MediaError, match="truncated or corrupt"):
        prepare(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    policy = ImagePolicy(downscale_oversized=True)
    with pytest.raises(MediaError, match="declares 9000x9000 pixels") as info:
        prepare(images.png_header_only(9000, 9000), policy)
    assert info.value.code == "image_too_large"


@pytest.mark.parametrize("side", [12_000, 100_000])  # Pillow's own warning, then its error
def test_gigantic_header_is_refused_before_any_decoding(side: int) -> None:
    with pytest.raises(MediaError, match="pixels") as info:
        prepare(images.png_header_only(side, side), ImagePolicy(downscale_oversized=True))
    assert info.value.code == "image_too_large"


def test_longest_side_over_the_limit_is_a_400_naming_image_and_size() -> None:
    data = encode(gradient(300, 20), "PNG")
    with pytest.raises(MediaError, match=r"image 1 .* is 300x20 pixels.*at most 256") as info:
        prepare(data, ImagePolicy(max_side=256))
    assert info.value.code == "image_too_large"


def test_longest_side_over_the_limit_is_downscaled_when_configured() -> None:
    prepared = prepare(
        encode(gradient(300, 20), "PNG"), ImagePolicy(max_side=256, downscale_oversized=True)
    )
    assert prepared.size == (256, 17) and prepared.original_size == (300, 20)


@pytest.mark.parametrize(
    ("detail", "size"), [("low", (128, 96)), ("high", (256, 192)), ("auto", (128, 96))]
)
def test_detail_picks_the_policy_edge(detail: Detail, size: tuple[int, int]) -> None:
    policy = ImagePolicy(low_longest_edge=128, high_longest_edge=256, default_detail="low")
    assert prepare(encode(gradient(400, 300), "JPEG"), policy, detail).size == size


def test_small_images_are_never_enlarged() -> None:
    policy = ImagePolicy(low_longest_edge=512, high_longest_edge=2048)
    assert prepare(encode(gradient(40, 30), "PNG"), policy, "high").size == (40, 30)


@pytest.mark.parametrize("slack", [0.0, 0.03])
def test_jpeg_draft_decoding_keeps_quality(slack: float) -> None:
    """DCT-domain reduction plus resampling stays close to a full decode + Lanczos."""
    im = gradient(1024, 768)
    data = encode(im, "JPEG", quality=92)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((250, 188), Image.Resampling.LANCZOS)
    prepared = prepare(data, ImagePolicy(low_longest_edge=250), jpeg_draft_slack=slack)
    assert prepared.size == (250, 188)
    mse = float(((np.asarray(prepared.image, float) - np.asarray(full, float)) ** 2).mean())
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 35


def test_inspect_image_reports_what_was_done() -> None:
    data = encode(gradient(400, 300), "JPEG", exif=images.exif_bytes(6, gps=True))
    prepared, report = inspect_image(data, ImagePolicy(low_longest_edge=100), "low")
    assert report["format"] == "JPEG"
    assert report["original_size"] == [300, 400] and report["size"] == [75, 100]
    assert report["identity"] == prepared.identity
    assert {"exif", "gps"} <= set(report["metadata_removed"])  # type: ignore[call-overload]
