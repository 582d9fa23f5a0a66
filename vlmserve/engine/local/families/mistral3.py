"""Mistral 3 (Ministral 3, Mistral Small 3.1 / 3.2): Pixtral sees a picture at its own aspect
ratio, one token per 28 px square (14 px patches merged 2x2) in rows closed by ``[IMG_BREAK]``
and ``[IMG_END]``; 1-D positions; no video input (a video arrives as labelled frames)."""

from __future__ import annotations

from typing import ClassVar

from vlmserve.engine.local.families.base import FRAME_LABEL_TOKENS, Family, edge

LOW_SIDE_TOKENS = 16  # detail=low: a picture at most 16x16 tokens (448 px on the releases)


class Mistral3(Family):
    """The processor only shrinks a picture to fit ``size["longest_edge"]`` (1540 px on the
    releases) and never enlarges it, so the size media chose decides the cost: high is that
    edge, low 16 tokens a side (or half the high edge, where that is smaller)."""

    model_types: ClassVar[tuple[str, ...]] = ("mistral3",)
    checkpoints: ClassVar[tuple[str, ...]] = (
        "mistralai/Ministral-3-3B-Instruct-2512",
        "mistralai/Ministral-3-8B-Instruct-2512",
        "mistralai/Ministral-3-14B-Instruct-2512",
        "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        "mistralai/Mistral-Small-3.2-24B-Instruct-2506",
    )

    def image_edges(self) -> tuple[int, int] | None:
        return self._low(), self._high()

    def video_frame_tokens(self) -> int | None:
        # a square frame at the low edge: its rows of tokens, a break or end a row, the label
        side = self._low() // self.token_side()
        return side * (side + 1) + FRAME_LABEL_TOKENS

    def reserved_strings(self) -> tuple[str, ...]:
        # the processor marks the row ends as image tokens too: typed in text, they would bill
        # as an image and break the embedder's layout
        ends = (self.processor.image_break_token, self.processor.image_end_token)
        return (*super().reserved_strings(), *ends)

    def _high(self) -> int:
        return edge(self.processor.image_processor.size)

    def _low(self) -> int:
        return min(LOW_SIDE_TOKENS * self.token_side(), self._high() // 2)

    def token_side(self) -> int:
        """Pixels a side of one image token covers: the patch times the merge."""
        return int(self.processor.patch_size) * int(self.processor.spatial_merge_size)
