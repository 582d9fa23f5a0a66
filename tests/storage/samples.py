"""Upload samples generated in the tests: still and animated images (Pillow), tiny videos (PyAV)."""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image

# container format name for PyAV, codec, sniffed content type
VIDEOS: dict[str, tuple[str, str, str]] = {
    "MP4": ("mp4", "mpeg4", "video/mp4"),
    "MOV": ("mov", "mpeg4", "video/quicktime"),
    "MKV": ("matroska", "mpeg4", "video/x-matroska"),
    "WEBM": ("webm", "libvpx-vp9", "video/webm"),
}


def image(fmt: str = "PNG", size: tuple[int, int] = (24, 16), color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def animated(fmt: str) -> bytes:
    """A two-frame GIF, APNG or WebP."""
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def video(kind: str, num_frames: int = 3) -> bytes:
    container, codec, _ = VIDEOS[kind]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=5)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(num_frames):
            pixels = np.full((32, 32, 3), i * 40, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()
