"""``Prompt`` → the model's own chat template → processor → token ids, model inputs and usage.

``count_tokens`` and ``generate`` both go through ``PromptPreparer.prepare``, so the usage a
generation reports is the count a client was told.

Image tokens are what the processor substitutes for each image (its ``mm_token_type_ids``): for
idefics3 the whole tile grid with its ``<fake_token_around_image>``/``<row_i_col_j>``/
``<global-img>`` wrappers; for qwen2_vl the ``<|image_pad|>`` tokens (the template's own
``<|vision_start|>``/``<|vision_end|>`` count as text).

Videos: families with native video input (qwen2_vl) get a ``{"type": "video"}`` part and
``videos=[frames]``, and bill its ``<|video_pad|>`` tokens as video tokens; the others get each
sampled frame as an image after a "Frame at 1.5 s:" label, and bill those frames' image tokens
(the same count a lone image of that size gets) as video tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from jinja2 import TemplateError
from PIL import Image

from vlmserve.engine.local.families import Family
from vlmserve.engine.local.tool_format import tool_format_for
from vlmserve.engine.types import MediaInput, MediaPart, Message, Prompt, PromptUsage, TextPart
from vlmserve.errors import InvalidRequestError

_IMAGE, _VIDEO = 1, 2  # mm_token_type_ids values
_MAX_SIZES = 4096  # picture sizes whose token count is remembered


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    token_ids: tuple[int, ...]
    model_inputs: dict[str, torch.Tensor]  # everything the first forward needs, on the CPU
    usage: PromptUsage
    media_identities: tuple[str, ...]  # per processor item, in order; prefix-cache keys fold these
    media_span: tuple[int, int] | None = None  # [first, last + 1) of the media tokens, if any

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class PromptPreparer:
    def __init__(self, processor: Any, family: Family) -> None:
        self.processor = processor
        self.family = family
        self._reserved = family.reserved_strings()
        self.tool_format = tool_format_for(family)
        self._frame_tokens: dict[tuple[int, int], int] = {}  # image tokens of a frame, by size

    def prepare(self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()) -> PreparedPrompt:
        """``tools``: OpenAI function tools, rendered in the family's tool format."""
        images, videos = self._media(prompt)
        native = self._native_videos(prompt)
        self.family.check_media(len(images), len(native))
        outputs = self._process(self.render(prompt, tools), images, videos, native)
        token_ids = tuple(int(t) for t in outputs["input_ids"][0].tolist())
        frame_tokens = self._frames_as_images_tokens(prompt) + self._videos_as_image_tokens(native)
        usage = _usage(token_ids, outputs, self.family, frame_tokens)
        span = _media_span(outputs)
        if not self.family.uses_mm_token_type_ids:
            outputs.pop("mm_token_type_ids", None)
        outputs.pop("attention_mask", None)  # one unpadded row: the causal mask says it all
        return PreparedPrompt(token_ids, dict(outputs), usage, self._identities(prompt), span)

    def media_tokens(self, prompt: Prompt) -> tuple[int, int] | None:
        """``prepare(prompt).usage``'s (image_tokens, video_tokens) without processing the whole
        prompt: the processor expands every picture of one size alike, so one probe per size
        (remembered) tells, and a request resending pictures costs no pixel work. None when it
        cannot tell so (native videos, an unknown processor): ``prepare`` then."""
        if self.family.native_video and any(m.kind == "video" for m in prompt.media):
            return None
        counts = {"image": 0, "video": 0}
        for index in _media_order(prompt):
            media = prompt.media[index]
            for frame in media.frames:
                tokens = self._tokens_of_frame(frame)
                if tokens is None:
                    return None
                counts[media.kind] += tokens
        return counts["image"], counts["video"]

    def render(self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()) -> str:
        """The prompt as the chat template renders it (media as the template's placeholders)."""
        conversation = [self._message(i, m, prompt) for i, m in enumerate(prompt.messages)]
        self._check_tools(tools)
        conversation = self.tool_format.rewrite(conversation, tools)
        try:
            text: str = self.processor.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        except TemplateError as exc:  # templates raise on conversations they cannot express
            raise InvalidRequestError(
                f"The model's chat template rejected the conversation: {exc}", param="messages"
            ) from exc
        return text

    def _process(
        self,
        text: str,
        images: list[Image.Image],
        videos: list[list[Image.Image]],
        video_items: list[MediaInput] | None = None,
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"return_tensors": "pt", "return_mm_token_type_ids": True}
        if images:
            kwargs["images"] = self.family.nest_images([self.family.fit_image(i) for i in images])
            kwargs.update(self.family.processor_kwargs())
        if videos:
            kwargs["videos"] = videos
            kwargs.update(self.family.video_inputs(video_items or []))
        try:
            return dict(self.processor(text=[text], **kwargs))
        except ValueError as exc:
            raise InvalidRequestError(
                f"The model's processor rejected the prompt: {exc}", param="messages"
            ) from exc

    def _media(self, prompt: Prompt) -> tuple[list[Image.Image], list[list[Image.Image]]]:
        """The pictures for ``images=`` (videos' frames too, unless the family takes videos
        natively) and the frame lists for ``videos=``, in prompt order."""
        images: list[Image.Image] = []
        videos: list[list[Image.Image]] = []
        for index in _media_order(prompt):
            media = prompt.media[index]
            frames = [frame.convert("RGB") for frame in media.frames]
            if media.kind == "video" and self.family.native_video:
                videos.append(frames)
            else:
                images.extend(frames)
        return images, videos

    def _native_videos(self, prompt: Prompt) -> list[MediaInput]:
        if not self.family.native_video:
            return []
        items = [prompt.media[i] for i in _media_order(prompt)]
        return [m for m in items if m.kind == "video"]

    def _videos_as_image_tokens(self, videos: list[MediaInput]) -> int:
        """Image-token ids that native videos expand to, in families whose processor writes a
        video as pictures (SmolVLM2, InternVL): billed as video tokens."""
        return sum(self.family.video_tokens(len(v.frames)) for v in videos)

    def _identities(self, prompt: Prompt) -> tuple[str, ...]:
        """One per item the processor sees, in prompt order: a video shown as frames is that
        many images, each named after the video and its place in it."""
        identities: list[str] = []
        for index in _media_order(prompt):
            media = prompt.media[index]
            if media.kind == "video" and not self.family.native_video:
                identities.extend(f"{media.identity}#{i}" for i in range(len(media.frames)))
            else:
                identities.append(media.identity)
        return tuple(identities)

    def _frames_as_images_tokens(self, prompt: Prompt) -> int:
        """Image tokens that belong to videos' frames (families without native video): the
        processor expands every picture of one size alike, so one probe per size tells."""
        if self.family.native_video:
            return 0
        total = 0
        for index in _media_order(prompt):
            media = prompt.media[index]
            if media.kind == "video":
                # unknown processor: its frames count as image tokens
                total += sum(self._tokens_of_frame(frame) or 0 for frame in media.frames)
        return total

    def _tokens_of_frame(self, frame: Image.Image) -> int | None:
        """The image tokens of a picture of ``frame``'s size; None: unknown processor."""
        size = self.family.fit_image(frame).size
        if size not in self._frame_tokens:
            placeholder = getattr(self.processor, "image_token", None)
            if not isinstance(placeholder, str):
                return None
            probe = self._process(placeholder, [Image.new("RGB", size)], [])
            if len(self._frame_tokens) >= _MAX_SIZES:  # sizes are client-chosen: stay bounded
                self._frame_tokens.clear()
            self._frame_tokens[size] = _usage((), probe, self.family).image_tokens
        return self._frame_tokens[size]

    def _message(self, i: int, message: Message, prompt: Prompt) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                self._check_text(i, part.text)
                content.append({"type": "text", "text": part.text})
            else:
                content.extend(self._media_parts(prompt, part.index))
        has_text = any(isinstance(p, TextPart) and p.text for p in message.parts)
        calls = self.tool_format.call_texts(message.tool_calls, has_text)
        content.extend({"type": "text", "text": text} for text in calls)
        if not content:
            content.append({"type": "text", "text": ""})  # some templates index content[0]
        return {"role": message.role, "content": content}

    def _media_parts(self, prompt: Prompt, index: int) -> list[dict[str, Any]]:
        media = prompt.media[index] if 0 <= index < len(prompt.media) else None
        if media is None or media.kind == "image":
            return [{"type": "image"}]  # a bad index is refused by _media_order
        if self.family.native_video:
            return [{"type": "video"}]
        parts: list[dict[str, Any]] = []
        for i in range(len(media.frames)):
            seconds = media.timestamps[i] if i < len(media.timestamps) else float(i)
            parts.append({"type": "text", "text": f"Frame at {seconds:.1f} s:"})
            parts.append({"type": "image"})
            parts.append({"type": "text", "text": "\n"})
        return parts

    def _check_text(self, i: int, text: str) -> None:
        for reserved in self._reserved:
            if reserved in text:
                raise InvalidRequestError(
                    f"messages[{i}] contains {reserved!r}, which this model reserves for media; "
                    "remove it from the text.",
                    param=f"messages[{i}].content",
                )

    def _check_tools(self, tools: tuple[dict[str, Any], ...]) -> None:
        text = json.dumps(tools, ensure_ascii=False)
        for reserved in self._reserved:
            if reserved in text:
                raise InvalidRequestError(
                    f"tools contain {reserved!r}, which this model reserves for media; remove it "
                    "from the tool definitions.",
                    param="tools",
                )


def _media_order(prompt: Prompt) -> list[int]:
    order = [p.index for m in prompt.messages for p in m.parts if isinstance(p, MediaPart)]
    for index in order:
        if not 0 <= index < len(prompt.media):
            raise InvalidRequestError(
                f"A message part refers to media #{index}, but the prompt has "
                f"{len(prompt.media)} media items.",
                param="messages",
            )
    return order


def _media_span(outputs: dict[str, Any]) -> tuple[int, int] | None:
    types = outputs.get("mm_token_type_ids")
    if types is None:
        return None
    where = torch.nonzero(torch.as_tensor(types)[0]).view(-1)
    return (int(where[0]), int(where[-1]) + 1) if len(where) else None


def _usage(
    token_ids: tuple[int, ...], outputs: dict[str, Any], family: Family, frame_tokens: int = 0
) -> PromptUsage:
    """``frame_tokens``: image tokens that are videos' frames, billed as video tokens."""
    types = outputs.get("mm_token_type_ids")
    if types is not None:
        types = torch.as_tensor(types)
        image_tokens = int((types == _IMAGE).sum())
        video_tokens = int((types == _VIDEO).sum())
    else:
        image_id = family.image_token_id()
        ids = token_ids or tuple(int(t) for t in outputs["input_ids"][0].tolist())
        image_tokens = sum(1 for t in ids if t == image_id)
        video_tokens = 0
    frame_tokens = min(frame_tokens, image_tokens)
    return PromptUsage(
        len(token_ids),
        image_tokens=image_tokens - frame_tokens,
        video_tokens=video_tokens + frame_tokens,
    )
