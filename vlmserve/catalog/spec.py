"""One catalogue entry: a public model name, what it accepts, its limits and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Modality = Literal["text", "image", "video"]


@dataclass(frozen=True, slots=True)
class EngineBinding:
    """Where a catalogue entry runs. Entries with equal bindings share one engine."""

    kind: Literal["local", "remote"] = "local"
    model: str = "HuggingFaceTB/SmolVLM-256M-Instruct"  # hub id or local directory
    dtype: str = "auto"
    device: str = "auto"
    upstreams: tuple[str, ...] = ()  # remote only: replica base URLs
    upstream_model: str | None = None  # remote only: the model name the replicas know
    # The model family (transformers ``model_type``: "qwen2_5_vl", "gemma3", ...) the model must
    # be; loading refuses another. None: whatever the model's config says.
    family: str | None = None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    context_window: int
    input_modalities: tuple[Modality, ...] = ("text", "image")
    max_images: int = 50
    default_detail: Literal["low", "high"] = "low"
    max_image_side: int = 4096
    max_image_bytes: int = 20 * 1024 * 1024  # all images of one request
    max_video_bytes: int = 128 * 1024 * 1024
    max_video_seconds: float = 300.0
    supports_tools: bool = True
    prompt_cache: bool = True
    created: int = 1700000000
    owned_by: str = "stepai"
    aliases: tuple[str, ...] = ()
    binding: EngineBinding = field(default_factory=EngineBinding)

    @property
    def accepts_video(self) -> bool:
        return "video" in self.input_modalities
