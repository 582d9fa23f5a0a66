"""``GET /v1/models``: Step's shape plus the limits a client needs to plan requests."""

from __future__ import annotations

from typing import Literal

from vlmserve.protocol.common import WireModel


class ModelCard(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    context_window: int
    input_modalities: list[str]
    max_images: int


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
