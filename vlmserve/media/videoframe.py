"""One decoded video frame → the picture the model sees: upright (the container's display matrix,
else a legacy ``rotate`` tag, as ffmpeg's autorotate reads them), square pixels, scaled by swscale
straight to its final size and converted to RGB in the same pass (the full-size RGB picture is
never built).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from fractions import Fraction
from typing import Final, cast

import av
import av.video.frame
from av.sidedata.sidedata import SideData
from av.sidedata.sidedata import Type as SideDataType
from PIL import Image

from vlmserve.media import resize

VideoFrame = av.video.frame.VideoFrame
_SWAPS_SIDES: Final = frozenset(
    {
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
    }
)
_TAG_ROTATIONS: Final = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}
_FLIPS: Final = {
    (True, True): Image.Transpose.ROTATE_180,
    (True, False): Image.Transpose.FLIP_LEFT_RIGHT,
    (False, True): Image.Transpose.FLIP_TOP_BOTTOM,
    (False, False): None,
}


class Shaper:
    """Turns each picked frame into its model-ready picture at once, so no decoded full-size frame
    is kept: upright, scaled to the size the first frame decides for all of them (a stream whose
    resolution changes midway still gives frames of one size)."""

    def __init__(self, stream: av.VideoStream, edge: int | None) -> None:
        self._stream, self._edge = stream, edge
        self.clockwise, self.transpose = 0, cast(Image.Transpose | None, None)
        self.upright = self.size = self._coded = (0, 0)

    def __call__(self, frame: VideoFrame) -> Image.Image:
        if self._coded == (0, 0):
            self._configure(frame)
        return _to_image(frame, self._coded, self.transpose)

    def _configure(self, frame: VideoFrame) -> None:
        self.clockwise, self.transpose = orientation(frame, self._stream)
        display = _display_size(frame.width, frame.height, self._stream.sample_aspect_ratio)
        swap = self.transpose in _SWAPS_SIDES
        self.upright = (display[1], display[0]) if swap else display
        self.size = resize.fit(self.upright, self._edge)
        self._coded = (self.size[1], self.size[0]) if swap else self.size


def _display_size(width: int, height: int, sar: Fraction | None) -> tuple[int, int]:
    """Anamorphic video: pixels are not square, the display width is ``width * sar``."""
    if not sar or sar <= 0 or sar == 1:
        return width, height
    return max(1, round(width * sar)), height


def _to_image(
    frame: VideoFrame, size: tuple[int, int], transpose: Image.Transpose | None
) -> Image.Image:
    """swscale scales (area filter: a proper low-pass for shrinking) and converts to RGB in one
    pass, so the full-size RGB picture is never built."""
    rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
    image = cast(Image.Image, rgb.to_image())  # type: ignore[no-untyped-call]
    if transpose is not None:
        image = image.transpose(transpose)
    image.info = {}
    return image


def orientation(frame: VideoFrame, stream: av.VideoStream) -> tuple[int, Image.Transpose | None]:
    """(clockwise degrees, the Pillow transpose that shows the frame upright), as ffmpeg's
    autorotate reads them: the display matrix (side data), else a legacy ``rotate`` tag."""
    for data in cast(Iterable[SideData], frame.side_data):
        matrix = bytes(data)
        if data.type == SideDataType.DISPLAYMATRIX and len(matrix) >= 36:
            return from_display_matrix(struct.unpack("=9i", matrix[:36]))
    try:
        degrees = round(float(stream.metadata.get("rotate", "0"))) % 360
    except ValueError:
        return 0, None
    return degrees, _TAG_ROTATIONS.get(degrees)


def from_display_matrix(m: tuple[int, ...]) -> tuple[int, Image.Transpose | None]:
    """fftools' ``get_rotation`` and autorotate filters, for a 3x3 display matrix: its clockwise
    angle and the flips its signs imply. Angles that are not multiples of 90 are left alone."""
    scale_x, scale_y = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if not scale_x or not scale_y:
        return 0, None
    theta = round(math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:  # transpose=cclock_flip or clock
        return 90, Image.Transpose.TRANSPOSE if m[3] > 0 else Image.Transpose.ROTATE_270
    if abs(theta - 270) < 1:  # transpose=clock_flip or cclock
        return 270, Image.Transpose.TRANSVERSE if m[3] < 0 else Image.Transpose.ROTATE_90
    if abs(theta - 180) < 1:  # hflip if m[0] < 0, then vflip if m[4] < 0
        return 180, _FLIPS[(m[0] < 0, m[4] < 0)]
    if abs(theta) < 1 and m[4] < 0:
        return 0, Image.Transpose.FLIP_TOP_BOTTOM
    return 0, None
