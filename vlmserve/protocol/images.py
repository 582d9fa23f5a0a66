"""``POST /v1/images/inspect``: what a model will see of one image, and its token cost.

Not a Step endpoint: vlmserve's own, for the playground and for anyone planning a request.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlmserve.protocol.chat import ImageURL
from vlmserve.protocol.common import WireModel


class ImageInspectRequest(WireModel):
    model: str = Field(min_length=1)
    image_url: ImageURL


class ImageInspection(WireModel):
    object: Literal["image.inspection"] = "image.inspection"
    model: str
    format: str  # JPEG, PNG, GIF, WEBP: decided by sniffing the bytes
    original_size: list[int]  # [width, height] after EXIF orientation
    size: list[int]  # [width, height] handed to the model
    detail: Literal["low", "high"]  # "auto" resolved to the model's default
    tokens: int  # what this image adds to prompt_tokens (image_tokens)
    num_bytes: int
    metadata_removed: list[str]
