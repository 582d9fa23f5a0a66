"""``Prompt`` → the model's own chat template → processor → token ids, model inputs and usage.

``count_tokens`` and ``generate`` both go through ``PromptPreparer.prepare``, so the usage a
generation reports is the count a client was told.

Image tokens are what the processor substitutes for each image (its ``mm_token_type_ids``): for
idefics3 the whole tile grid with its ``<fake_token_around_image>``/``<row_i_col_j>``/
``<global-img>`` wrappers; for qwen2_vl the ``<|image_pad|>`` tokens (the template's own
``<|vision_start|>``/``<|vision_end|>`` count as text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from jinja2 import TemplateError
from PIL import Image

from vlmserve.engine.local.family import Family
from vlmserve.engine.local.tool_format import tool_format_for
from vlmserve.engine.types import MediaPart, Message, Prompt, PromptUsage, TextPart
from vlmserve.errors import InvalidRequestError, NotSupportedYetError

_IMAGE, _VIDEO = 1, 2  # mm_token_type_ids values


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    token_ids: tuple[int, ...]
    model_inputs: dict[str, torch.Tensor]  # everything the first forward needs, on the CPU
    usage: PromptUsage
    media_identities: tuple[str, ...]  # in prompt order; prefix-cache keys fold these in
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

    def prepare(self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()) -> PreparedPrompt:
        """``tools``: OpenAI function tools, rendered in the family's tool format."""
        images = self._images(prompt)
        outputs = self._process(self.render(prompt, tools), images)
        token_ids = tuple(int(t) for t in outputs["input_ids"][0].tolist())
        usage = _usage(token_ids, outputs, self.family)
        span = _media_span(outputs)
        if not self.family.uses_mm_token_type_ids:
            outputs.pop("mm_token_type_ids", None)
        outputs.pop("attention_mask", None)  # one unpadded row: the causal mask says it all
        identities = tuple(prompt.media[i].identity for i in _media_order(prompt))
        return PreparedPrompt(token_ids, dict(outputs), usage, identities, span)

    def render(self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()) -> str:
        """The prompt as the chat template renders it (media as the template's placeholders)."""
        conversation = [self._message(i, m) for i, m in enumerate(prompt.messages)]
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

    def _process(self, text: str, images: list[Image.Image]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"return_tensors": "pt", "return_mm_token_type_ids": True}
        if images:
            kwargs["images"] = self.family.nest_images([self.family.fit_image(i) for i in images])
            kwargs.update(self.family.processor_kwargs())
        try:
            return dict(self.processor(text=[text], **kwargs))
        except ValueError as exc:
            raise InvalidRequestError(
                f"The model's processor rejected the prompt: {exc}", param="messages"
            ) from exc

    def _images(self, prompt: Prompt) -> list[Image.Image]:
        images = []
        for index in _media_order(prompt):
            media = prompt.media[index]
            if media.kind != "image":
                raise NotSupportedYetError(
                    "Video input is not supported by the local engine yet; send images instead.",
                    param="messages",
                )
            images.append(media.frames[0].convert("RGB"))
        return images

    def _message(self, i: int, message: Message) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                self._check_text(i, part.text)
                content.append({"type": "text", "text": part.text})
            else:
                content.append({"type": "image"})
        has_text = any(isinstance(p, TextPart) and p.text for p in message.parts)
        calls = self.tool_format.call_texts(message.tool_calls, has_text)
        content.extend({"type": "text", "text": text} for text in calls)
        if not content:
            content.append({"type": "text", "text": ""})  # some templates index content[0]
        return {"role": message.role, "content": content}

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


def _usage(token_ids: tuple[int, ...], outputs: dict[str, Any], family: Family) -> PromptUsage:
    types = outputs.get("mm_token_type_ids")
    if types is not None:
        types = torch.as_tensor(types)
        image_tokens = int((types == _IMAGE).sum())
        video_tokens = int((types == _VIDEO).sum())
    else:
        image_id = getattr(family.processor, "image_token_id", None)
        image_tokens = sum(1 for t in token_ids if t == image_id)
        video_tokens = 0
    return PromptUsage(len(token_ids), image_tokens=image_tokens, video_tokens=video_tokens)
