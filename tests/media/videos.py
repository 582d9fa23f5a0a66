"""Videos made in the tests with PyAV: small, a few seconds, with frames that say which they are.

Frame ``i`` is filled with grey level ``level(i)`` and has a white block in its top-left corner, so
a test can tell which frame was sampled (``frame_index``) and which way up it is (``corner``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

H264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"
# container → (PyAV format, codec)
CONTAINERS: dict[str, tuple[str, str]] = {
    "MP4": ("mp4", H264),
    "MOV": ("mov", H264),
    "MKV": ("matroska", H264),
    "WEBM": ("webm", "libvpx-vp9"),
}
WIDTH, HEIGHT = 64, 48
STEP = 6  # grey levels between consecutive frames


def level(index: int) -> int:
    return 16 + (index * STEP) % 220


def pixels(index: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> np.ndarray:
    width, height = size
    frame = np.full((height, width, 3), level(index), np.uint8)
    frame[: height // 4, : width // 4] = 255  # the top-left marker
    return frame


def encode(
    container: str = "MP4",
    *,
    seconds: float = 3.0,
    fps: int = 10,
    gop: int | None = None,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    times: Sequence[float] | None = None,
    rotation: int | None = None,
    hflip: bool = False,
    audio: bool = False,
    out: io.RawIOBase | Path | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """A video of ``seconds`` at ``fps`` (or frames at ``times``, seconds: variable frame rate);
    ``gop`` frames per keyframe (default: one per second); ``rotation`` degrees counterclockwise
    stored in the display matrix."""
    fmt, codec = CONTAINERS[container]
    target = out if out is not None else io.BytesIO()
    stamps = list(times) if times is not None else [i / fps for i in range(round(seconds * fps))]
    with av.open(target, "w", format=fmt, options=options or {}) as output:  # type: ignore[arg-type]
        x264 = {"preset": "ultrafast", "bf": "2"} if codec == "libx264" else {}
        stream = output.add_stream(codec, rate=fps, options=x264)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.gop_size = gop or fps
        if rotation is not None or hflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        sound = _audio_stream(output) if audio else None
        for i, seconds_at in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(pixels(i, size), format="rgb24")
            frame.pts, frame.time_base = round(seconds_at * 1000), Fraction(1, 1000)
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
        if sound is not None:
            _write_silence(output, sound, max(stamps, default=0.0) + 1 / fps)
    return target.getvalue() if isinstance(target, io.BytesIO) else b""


def audio_only(container: str = "MP4", seconds: float = 1.0) -> bytes:
    fmt = CONTAINERS[container][0]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as output:
        sound = _audio_stream(output)
        _write_silence(output, sound, seconds)
    return buf.getvalue()


def _audio_stream(output: av.container.OutputContainer) -> av.AudioStream:
    codec = "libopus" if output.format.name == "webm" else "aac"
    stream = output.add_stream(codec, rate=48000)
    assert isinstance(stream, av.AudioStream)
    stream.layout = "mono"
    return stream


def _write_silence(
    output: av.container.OutputContainer, stream: av.AudioStream, seconds: float
) -> None:
    samples = 960
    for i in range(int(seconds * 48000 / samples) + 1):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), "fltp", "mono")
        frame.sample_rate, frame.pts = 48000, i * samples
        output.mux(stream.encode(frame))
    output.mux(stream.encode())


class Pipe(io.RawIOBase):
    """A write-only, non-seekable sink: muxers cannot go back to write durations or indexes
    (as in a browser's MediaRecorder WebM)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += bytes(b)
        return len(b)


def streamed_webm(seconds: float = 3.0, fps: int = 10) -> bytes:
    pipe = Pipe()
    encode("WEBM", seconds=seconds, fps=fps, out=pipe)
    return bytes(pipe.data)


def frame_index(image: Image.Image) -> int:
    """Which frame ``image`` shows, from its grey level (away from the marker)."""
    array = np.asarray(image.convert("L"), dtype=np.float32)
    height, width = array.shape
    grey = float(np.median(array[height // 2 :, width // 2 :]))
    return min(range(40), key=lambda i: abs(level(i) - grey))


def corner(image: Image.Image) -> str:
    """Where the white marker is: "top-left", "top-right", "bottom-left" or "bottom-right"."""
    array = np.asarray(image.convert("L"), dtype=np.float32)
    height, width = array.shape
    quads = {
        "top-left": array[: height // 4, : width // 4],
        "top-right": array[: height // 4, -width // 4 :],
        "bottom-left": array[-height // 4 :, : width // 4],
        "bottom-right": array[-height // 4 :, -width // 4 :],
    }
    return max(quads, key=lambda name: float(quads[name].mean()))
