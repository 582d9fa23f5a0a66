"""Usage accounting: Step's top-level ``cached_tokens`` plus OpenAI's ``prompt_tokens_details``."""

from __future__ import annotations

from vlmserve.protocol.common import WireModel


class PromptTokensDetails(WireModel):
    cached_tokens: int = 0
    image_tokens: int = 0
    video_tokens: int = 0


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()
