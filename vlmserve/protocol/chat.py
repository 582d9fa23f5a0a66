"""``POST /v1/chat/completions``: the request and the non-streamed response, as clients see them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from vlmserve.protocol.common import WireModel
from vlmserve.protocol.usage import Usage


class TextContent(WireModel):
    type: Literal["text"]
    text: str


class ImageURL(WireModel):
    url: str = Field(min_length=1)
    detail: Literal["low", "high", "auto"] | None = None


class ImageContent(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(WireModel):
    url: str = Field(min_length=1)


class VideoContent(WireModel):
    type: Literal["video_url"]
    video_url: VideoURL


class AudioContent(WireModel):
    type: Literal["input_audio"]
    input_audio: dict[str, Any] = Field(default_factory=dict)


ContentPart = Annotated[
    TextContent | ImageContent | VideoContent | AudioContent, Field(discriminator="type")
]


class FunctionCall(WireModel):
    name: str
    arguments: str = ""


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(WireModel):
    role: Literal["system"]
    content: str | list[TextContent]
    name: str | None = None


class UserMessage(WireModel):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: str | list[TextContent] | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None


class ToolMessage(WireModel):
    role: Literal["tool"]
    content: str | list[TextContent]
    tool_call_id: str


ChatMessageIn = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class StreamOptions(WireModel):
    include_usage: bool | None = False  # a last chunk, choices: [], with the usage (OpenAI)
    continuous_usage_stats: bool | None = False  # running usage on every chunk (vLLM)


class JsonSchemaFormat(WireModel):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = False
    description: str | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDef(WireModel):
    name: str | None = None  # required for "function" tools (checked by serving/tools.py)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(WireModel):
    type: str  # "function"; Step's built-in "web_search" / "retrieval" are refused by serving
    function: FunctionDef | None = None


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    # Sampling fields are optional so an explicit null means "the default" (serving fills it in).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=16)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class ChatMessageOut(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class Choice(WireModel):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
