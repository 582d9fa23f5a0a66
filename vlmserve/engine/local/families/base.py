"""The generic family: what every family can override, and the fallback for unknown model types.

Everything else in the engine is family-agnostic. A family is chosen by the config's ``model_type``
(``families.family_for``); unknown types get ``Family`` itself, which works for models whose text
stack takes plain 1-D positions and whose processor takes a flat list of images.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image

from vlmserve.engine.types import MediaInput

FRAME_LABEL_TOKENS = 8  # "Frame at 12.5 s:" and the line break after the frame


class Family:
    model_types: ClassVar[tuple[str, ...]] = ()
    uses_mm_token_type_ids: ClassVar[bool] = False  # does forward() take the processor's type ids
    # Does the processor take ``videos=[frames]`` (the model's own video format)? Otherwise a
    # video reaches the model as its frames, each an image after a "Frame at 1.0 s:" label.
    native_video: ClassVar[bool] = False
    # The chat template's own default system text (written in front of an injected tools section).
    default_system_prompt: ClassVar[str] = ""
    # Real checkpoints this family serves (hub ids), for ``vlmserve models`` and docs/models.md.
    checkpoints: ClassVar[tuple[str, ...]] = ()

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

    def upstream_processor_kwargs(self, sizes: list[tuple[int, int]]) -> dict[str, Any]:
        """``mm_processor_kwargs`` that make a vLLM replica's processor tile pictures of these
        (width, height) sizes as this family counts them (remote mode); {}: none needed."""
        return {}

    def video_kwargs(self) -> dict[str, Any]:
        """Processor options for ``videos=`` (native video families): frames arrive sampled."""
        return {}

    def video_inputs(self, videos: list[MediaInput]) -> dict[str, Any]:
        """Processor options for these videos (native video families): ``video_kwargs`` plus,
        for processors that read it, each video's ``VideoMetadata`` (fps and frame times)."""
        return self.video_kwargs()

    def image_token_id(self) -> int | None:
        """The id billed as an image token when the processor gives no ``mm_token_type_ids``."""
        value = getattr(self.processor, "image_token_id", None)
        return value if isinstance(value, int) else None

    def check_media(self, num_images: int, num_videos: int) -> None:
        """Raise ``CapabilityError`` for a mix of media this family's processor cannot take."""

    def video_tokens(self, num_frames: int) -> int:
        """Image-token ids a native video of ``num_frames`` frames expands to, for processors
        that write a video as pictures (they are billed as video tokens); 0: it has its own."""
        return 0

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

    def decode_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Position ids of one new token per row; ``positions`` (1-D, long) holds each row's text
        position, its rope delta already added, so rows of different sequences batch together."""
        return positions.view(-1, 1)


def get_size(size: Any, key: str) -> Any:
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def edge(size: Any) -> int:
    value = get_size(size, "longest_edge") or get_size(size, "height")
    if not value:
        raise ValueError(f"the image processor's size {size!r} has no longest_edge")
    return int(value)


def video_metadata(video: MediaInput) -> Any:
    """transformers' ``VideoMetadata`` of sampled frames: frame ``i`` at ``timestamps[i]``
    seconds, expressed as indices into a stream at the sampled rate (what processors read)."""
    from transformers.video_utils import VideoMetadata

    times = list(video.timestamps) or [float(i) for i in range(len(video.frames))]
    fps = video.fps or (len(times) / max(times[-1], 1.0) if len(times) > 1 else 1.0)
    width, height = video.frames[0].size
    return VideoMetadata(
        total_num_frames=max(round(times[-1] * fps) + 1, len(times)),
        fps=fps,
        width=width,
        height=height,
        duration=times[-1] + 1 / fps,
        frames_indices=[round(t * fps) for t in times],
    )
