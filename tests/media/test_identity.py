"""Identity is a hash of the model-ready pixels: copies that differ only in encoding or metadata
are one image; any visible change is another."""

from __future__ import annotations

from PIL import Image, PngImagePlugin

from tests.media import images
from tests.media.images import encode, gradient
from vlmserve.media.identity import image_identity
from vlmserve.media.prepare import prepare_image, sizing_for
from vlmserve.media.types import ImagePolicy
from vlmserve.settings import MediaSettings


def identity(data: bytes, policy: ImagePolicy | None = None) -> str:
    sizing = sizing_for(policy or ImagePolicy(), "auto", MediaSettings())
    return prepare_image(data, sizing, "image 1").identity


def test_identity_same_for_losslessly_reencoded_copies() -> None:
    im = gradient(64, 48)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "edited")
    copies = [
        encode(im, "PNG", compress_level=0),
        encode(im, "PNG", compress_level=9, pnginfo=info),
        encode(im, "PNG", exif=images.exif_bytes(gps=True)),
        encode(im, "WEBP", lossless=True),
        encode(im, "PNG", icc_profile=_srgb()),
    ]
    assert len({identity(c) for c in copies}) == 1


def test_identity_same_for_metadata_edited_jpeg() -> None:
    """Same compressed data, different APP segments (as an EXIF editor leaves it)."""
    jpeg = encode(gradient(64, 48), "JPEG", quality=90)
    edited = encode(gradient(64, 48), "JPEG", quality=90, exif=images.exif_bytes(gps=True))
    assert jpeg != edited
    assert identity(jpeg) == identity(edited)


def test_identity_same_for_an_orientation_tag_and_rotated_pixels() -> None:
    data, upright = images.oriented_pair(6)
    assert identity(data) == identity(encode(upright, "PNG"))


def test_hash_collision_one_pixel_change() -> None:
    im = gradient(64, 48)
    changed = im.copy()
    r, g, b = changed.getpixel((10, 20))  # type: ignore[misc]
    changed.putpixel((10, 20), (r, g, b ^ 1))
    assert identity(encode(im, "PNG")) != identity(encode(changed, "PNG"))


def test_hash_collision_same_bytes_other_shape() -> None:
    """Same pixel bytes, transposed shape: 2x3 and 3x2 must differ."""
    a = Image.frombytes("RGB", (2, 3), bytes(range(18)))
    b = Image.frombytes("RGB", (3, 2), bytes(range(18)))
    assert image_identity(a) != image_identity(b)


def test_hash_collision_detail_levels() -> None:
    """The encoder sees different pixels at another size, so the identity differs too."""
    data = encode(gradient(400, 300), "PNG")
    low = identity(data, ImagePolicy(low_longest_edge=100))
    full = identity(data)
    assert low != full


def _srgb() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
