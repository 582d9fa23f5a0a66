"""``POST /v1/token/count``: the same messages as chat, answered with what chat would bill."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from vlmserve.protocol.chat import ChatMessageIn
from vlmserve.protocol.common import WireModel
from vlmserve.protocol.limits import check_body


class TokenCountRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        return check_body(data)


class TokenCountData(WireModel):
    total_tokens: int
    image_tokens: int = 0
    video_tokens: int = 0


class TokenCountResponse(WireModel):
    data: TokenCountData
