"""Gemma 3: every image is resized to one fixed square (896 px) and pooled to 256 soft tokens;
1-D positions; no video input (a video arrives as labelled frames)."""

from __future__ import annotations

from typing import ClassVar

from vlmserve.engine.local.families.base import Family, get_size


class Gemma3(Family):
    """``detail`` cannot change an image's cost (pan-and-scan is off, as released): both budgets
    are the processor's square, and every image bills ``image_seq_length`` tokens."""

    model_types: ClassVar[tuple[str, ...]] = ("gemma3",)
    checkpoints: ClassVar[tuple[str, ...]] = (
        "google/gemma-3-4b-it",
        "google/gemma-3-12b-it",
        "google/gemma-3-27b-it",
    )

    def image_edges(self) -> tuple[int, int] | None:
        side = self._side()
        return side, side

    def image_token_id(self) -> int | None:
        # the processor's ``image_token_id`` is <start_of_image>; the soft tokens are the image
        return int(self.processor.tokenizer.image_token_id)

    def video_frame_tokens(self) -> int | None:
        return int(self.processor.image_seq_length) + 2 + 12  # boi/eoi, label and blank lines

    def _side(self) -> int:
        size = self.processor.image_processor.size
        return int(get_size(size, "height") or 896)
