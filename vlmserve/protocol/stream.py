"""Streamed ``chat.completion.chunk`` objects (OpenAI shape; running usage on every chunk)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from vlmserve.protocol.chat import ToolCall
from vlmserve.protocol.common import WireModel
from vlmserve.protocol.usage import Usage


class ChoiceDelta(WireModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A delta names only what changed: {"content": "Hi"}, not {"role": null, ...}.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(WireModel):
    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
