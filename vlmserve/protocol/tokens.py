"""``POST /v1/token/count``: the same body as chat, answered with what chat would bill.

The fields that shape the prompt (``tools`` go into it) or are checked with it are read as chat
reads them; sampling fields are ignored like any unknown field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlmserve.protocol.chat import ChatMessageIn, NamedToolChoice, ResponseFormat, Tool
from vlmserve.protocol.common import WireModel


class TokenCountRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class TokenCountData(WireModel):
    total_tokens: int
    image_tokens: int = 0
    video_tokens: int = 0


class TokenCountResponse(WireModel):
    data: TokenCountData
