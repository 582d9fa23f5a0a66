"""``POST /v1/token/count``: the same messages as chat, answered with what chat would bill."""

from __future__ import annotations

from pydantic import Field

from vlmserve.protocol.chat import ChatMessageIn
from vlmserve.protocol.common import WireModel


class TokenCountRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)


class TokenCountData(WireModel):
    total_tokens: int
    image_tokens: int = 0
    video_tokens: int = 0


class TokenCountResponse(WireModel):
    data: TokenCountData
