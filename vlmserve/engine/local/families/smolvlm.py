"""SmolVLM2 (``smolvlm``): SmolVLM's tiles for images, and native video: the processor expands
``<video>`` into "Frame from 00:03:" labels, each followed by one global view of that frame."""

from __future__ import annotations

from typing import Any, ClassVar

from vlmserve.engine.local.families.base import video_metadata
from vlmserve.engine.local.families.idefics3 import Idefics3
from vlmserve.engine.types import MediaInput
from vlmserve.errors import UnsupportedContentError

VIDEO_FRAME_LABEL_TOKENS = 8  # "\nFrame from 00:03:" before each frame's view


class SmolVLM(Idefics3):
    model_types: ClassVar[tuple[str, ...]] = ("smolvlm",)
    native_video = True
    checkpoints: ClassVar[tuple[str, ...]] = (
        "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
        "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
    )

    def video_kwargs(self) -> dict[str, Any]:
        return {"do_sample_frames": False}

    def video_inputs(self, videos: list[MediaInput]) -> dict[str, Any]:
        return {**self.video_kwargs(), "video_metadata": [video_metadata(v) for v in videos]}

    def video_frame_tokens(self) -> int | None:
        # one global view per frame: its image tokens, two wrappers, the global marker, the label
        return int(getattr(self.processor, "image_seq_len", 64)) + VIDEO_FRAME_LABEL_TOKENS + 3

    def check_media(self, num_images: int, num_videos: int) -> None:
        # Both would land in the processor's one ``pixel_values`` (the video's overwrite the
        # images'), and the model then fails on a count mismatch.
        if num_images and num_videos:
            raise UnsupportedContentError(
                "This model (SmolVLM2) cannot take images and videos in the same conversation: "
                "its processor holds one kind of pixels per request. Send the video and the "
                "images in separate conversations.",
                param="messages",
            )

    def video_tokens(self, num_frames: int) -> int:
        """Image-token ids a video of ``num_frames`` expands to (billed as video tokens)."""
        return num_frames * int(self.processor.image_seq_len)
