"""What differs between model families: image layout, processor options, positions, size budgets.

Everything else in the engine is family-agnostic. A family is chosen by the config's ``model_type``;
unknown types get ``Family`` itself, which works for models whose text stack takes plain 1-D
positions and whose processor takes a flat list of images.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from PIL import Image


class Family:
    model_types: ClassVar[tuple[str, ...]] = ()
    uses_mm_token_type_ids: ClassVar[bool] = False  # does forward() take the processor's type ids
    # Does the processor take ``videos=[frames]`` (the model's own video format)? Otherwise a
    # video reaches the model as its frames, each an image after a "Frame at 1.0 s:" label.
    native_video: ClassVar[bool] = False

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor

    def nest_images(self, images: list[Image.Image]) -> Any:
        """The ``images`` argument of ``processor(text=[one prompt], images=...)``."""
        return images

    def fit_image(self, image: Image.Image) -> Image.Image:
        """The picture as this family's processor should receive it (media already sized it)."""
        return image

    def processor_kwargs(self) -> dict[str, Any]:
        return {}

    def video_kwargs(self) -> dict[str, Any]:
        """Processor options for ``videos=`` (native video families): frames arrive sampled."""
        return {}

    def image_edges(self) -> tuple[int, int] | None:
        """(low, high) longest-edge budgets for detail=low/high; None: leave images as they are."""
        return None

    def video_frame_tokens(self) -> int | None:
        """About how many prompt tokens one video frame at the detail=low size costs (an upper
        bound: a square frame), for the per-video token budget; None: unknown."""
        return None

    def reserved_strings(self) -> tuple[str, ...]:
        """Strings a user's text must not contain: the processor would read them as media slots."""
        tokens = (
            getattr(self.processor, "image_token", None),
            getattr(self.processor, "video_token", None),
        )
        return tuple(t for t in tokens if isinstance(t, str) and t)

    def prefill_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Position ids for the prompt, and the offset decode positions add to the cache length."""
        length = inputs["input_ids"].shape[1]
        positions = torch.arange(length, device=inputs["input_ids"].device).unsqueeze(0)
        return positions, 0

    def decode_positions(self, position: int, num_rows: int, device: torch.device) -> torch.Tensor:
        """Position ids of one new token per row, at text position ``position``."""
        return torch.full((num_rows, 1), position, dtype=torch.long, device=device)


class Idefics3(Family):
    """SmolVLM / Idefics3: images are split into ``max_image_size`` tiles plus a global view.

    The stock processor first rescales every image so its longest edge *equals*
    ``size["longest_edge"]`` (upscaling small ones), which would turn every image into the full
    high-detail tile grid. We switch that resize off and only cap images at that edge here, so the
    size ``media`` chose (one tile for detail=low) decides the tile count.
    """

    model_types = ("idefics3", "smolvlm")

    def nest_images(self, images: list[Image.Image]) -> Any:
        return [images]

    def processor_kwargs(self) -> dict[str, Any]:
        return {"do_resize": False}

    def fit_image(self, image: Image.Image) -> Image.Image:
        high = self._edges()[1]
        width, height = image.size
        if max(width, height) <= high:
            return image
        scale = high / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image.resize(size, Image.Resampling.LANCZOS)

    def image_edges(self) -> tuple[int, int] | None:
        return self._edges()

    def video_frame_tokens(self) -> int | None:
        # one tile at the low edge: its image tokens, three wrappers, and the frame's label
        return int(getattr(self.processor, "image_seq_len", 64)) + _FRAME_LABEL_TOKENS + 3

    def _edges(self) -> tuple[int, int]:
        image_processor = self.processor.image_processor
        low = _edge(image_processor.max_image_size)
        high = _edge(image_processor.size)
        return low, max(low, high)


class Qwen2VL(Family):
    """Qwen2-VL: any resolution within [min_pixels, max_pixels], 3-D (M-RoPE) positions.

    Budgets: high is the longest edge of a square holding ``max_pixels``; low is 448 px (16x16
    merged patches, 256 tokens, close to the 512 px "low detail" of the hosted APIs), clamped into
    what ``min_pixels``/``max_pixels`` allow. Both are multiples of patch_size * merge_size.
    """

    model_types = ("qwen2_vl",)
    uses_mm_token_type_ids = True
    native_video = True

    def video_kwargs(self) -> dict[str, Any]:
        return {"do_sample_frames": False}

    def video_frame_tokens(self) -> int | None:
        """Pixels of a square frame at the low edge, within the video processor's bounds, in
        merged patches; two frames share one temporal patch."""
        edges = self.image_edges()
        video = getattr(self.processor, "video_processor", None)
        if edges is None or video is None:
            return None
        factor = video.patch_size * video.merge_size
        pixels = edges[0] * edges[0]
        low = _get(video.size, "shortest_edge") or 0
        high = _get(video.size, "longest_edge") or pixels
        pixels = min(max(pixels, int(low)), int(high))
        return max(1, math.ceil(pixels / (factor * factor) / video.temporal_patch_size))

    def image_edges(self) -> tuple[int, int] | None:
        image_processor = self.processor.image_processor
        factor = image_processor.patch_size * image_processor.merge_size
        size = image_processor.size
        min_pixels = getattr(size, "shortest_edge", None) or _get(size, "shortest_edge") or 56 * 56
        max_pixels = getattr(size, "longest_edge", None) or _get(size, "longest_edge") or 1003520
        high = max(factor, math.isqrt(int(max_pixels)) // factor * factor)
        floor = math.ceil(math.sqrt(int(min_pixels)) / factor) * factor
        low = min(high, max(floor, 448))
        return low, high

    def prefill_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        input_ids = inputs["input_ids"]
        grid = inputs.get("image_grid_thw")
        video_grid = inputs.get("video_grid_thw")
        types = inputs.get("mm_token_type_ids")
        if (grid is None and video_grid is None) or types is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            return positions.view(1, 1, -1).expand(3, 1, -1), 0
        positions, deltas = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=types,
            image_grid_thw=grid,
            video_grid_thw=video_grid,
        )
        return positions, int(deltas.view(-1)[0].item())

    def decode_positions(self, position: int, num_rows: int, device: torch.device) -> torch.Tensor:
        return torch.full((3, num_rows, 1), position, dtype=torch.long, device=device)


FAMILIES: tuple[type[Family], ...] = (Idefics3, Qwen2VL)
_FRAME_LABEL_TOKENS = 8  # "Frame at 12.5 s:" and the line break after the frame


def family_for(model: Any, processor: Any) -> Family:
    model_type = getattr(model.config, "model_type", "")
    for cls in FAMILIES:
        if model_type in cls.model_types:
            return cls(model, processor)
    return Family(model, processor)


def _get(size: Any, key: str) -> Any:
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _edge(size: Any) -> int:
    value = _get(size, "longest_edge") or _get(size, "height")
    if not value:
        raise ValueError(f"the image processor's size {size!r} has no longest_edge")
    return int(value)
