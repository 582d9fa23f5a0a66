"""Wire messages → engine ``Message``s plus the ordered media references they point to.

History is rendered like the newest turn: every earlier image stays in place (and counts towards the
model's image cap, which ``media`` enforces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlmserve.catalog.spec import ModelSpec
from vlmserve.engine.types import MediaPart, Message, Part, TextPart, ToolCall
from vlmserve.errors import InvalidRequestError, UnsupportedContentError
from vlmserve.media.types import MediaRef
from vlmserve.protocol.chat import (
    AssistantMessage,
    AudioContent,
    ChatMessageIn,
    ImageContent,
    SystemMessage,
    TextContent,
    ToolMessage,
    UserMessage,
    VideoContent,
)


@dataclass(frozen=True, slots=True)
class Rendered:
    messages: tuple[Message, ...]
    refs: tuple[MediaRef, ...]

    @property
    def image_refs(self) -> tuple[MediaRef, ...]:
        return tuple(ref for ref in self.refs if ref.kind == "image")

    @property
    def has_video(self) -> bool:
        return any(ref.kind == "video" for ref in self.refs)


def render_messages(
    messages: Sequence[ChatMessageIn], spec: ModelSpec, video_models: Sequence[str] = ()
) -> Rendered:
    refs: list[MediaRef] = []
    out = [_message(i, msg, spec, refs, video_models) for i, msg in enumerate(messages)]
    return Rendered(tuple(out), tuple(refs))


def _message(
    i: int, msg: ChatMessageIn, spec: ModelSpec, refs: list[MediaRef], video_models: Sequence[str]
) -> Message:
    if isinstance(msg, UserMessage):
        return Message("user", _user_parts(i, msg.content, spec, refs, video_models))
    if isinstance(msg, SystemMessage):
        return Message("system", _text_parts(msg.content))
    if isinstance(msg, AssistantMessage):
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in msg.tool_calls or ()
        )
        if msg.content is None and not calls:
            raise InvalidRequestError(
                f"messages[{i}]: an assistant message needs content or tool_calls.",
                param=f"messages[{i}].content",
            )
        return Message("assistant", _text_parts(msg.content or ""), tool_calls=calls)
    assert isinstance(msg, ToolMessage)
    return Message("tool", _text_parts(msg.content), tool_call_id=msg.tool_call_id)


def _text_parts(content: str | list[TextContent]) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    return tuple(TextPart(part.text) for part in content)


def _user_parts(
    i: int,
    content: str | Sequence[object],
    spec: ModelSpec,
    refs: list[MediaRef],
    video_models: Sequence[str],
) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    parts: list[Part] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if isinstance(part, TextContent):
            parts.append(TextPart(part.text))
        elif isinstance(part, ImageContent):
            ordinal = sum(1 for r in refs if r.kind == "image") + 1
            detail = part.image_url.detail or "auto"
            refs.append(
                MediaRef(part.image_url.url, "image", f"{where}.image_url.url", ordinal, detail)
            )
            parts.append(MediaPart(len(refs) - 1))
        elif isinstance(part, VideoContent):
            _check_video(spec, f"{where}.video_url", video_models)
            ordinal = sum(1 for r in refs if r.kind == "video") + 1
            refs.append(MediaRef(part.video_url.url, "video", f"{where}.video_url.url", ordinal))
            parts.append(MediaPart(len(refs) - 1))
        elif isinstance(part, AudioContent):
            raise UnsupportedContentError(
                f"{where}: {spec.id} is a vision model and does not accept audio input "
                "(input_audio). Send text, image_url or video_url parts.",
                param=where,
            )
    return tuple(parts)


def _check_video(spec: ModelSpec, where: str, video_models: Sequence[str]) -> None:
    if not spec.accepts_video:
        others = ", ".join(video_models) or "none on this server"
        raise UnsupportedContentError(
            f"{where}: the model {spec.id} does not accept video input. "
            f"Models that accept video: {others}.",
            param=where,
        )
