"""What ``vlmserve models`` says about a binding's model: its family, whether it takes video
natively, its detail budgets and what a picture costs at each. Reads files only (a local
directory, or a hub id already in the Hugging Face cache); never downloads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlmserve.engine.local.counter import load_preparer
from vlmserve.engine.local.families import family_class
from vlmserve.engine.remote.processor import local_processor
from vlmserve.engine.types import MediaInput, MediaPart, Message, Prompt


@dataclass(frozen=True, slots=True)
class ModelDescription:
    family: str  # the registered family's model_type, or "generic (<model_type>)"
    native_video: bool
    image_edges: tuple[int, int] | None  # longest-edge budgets for detail=low / high
    image_tokens: dict[str, int]  # detail → tokens of the probe picture at that budget
    directory: Path


def describe_model(model: str, probe: tuple[int, int] = (1024, 768)) -> ModelDescription | None:
    """None when the model's files are not on this machine. ``probe``: the picture's size."""
    directory = local_processor(model)
    if directory is None:
        return None
    preparer, family = load_preparer(directory)
    model_type = str(getattr(family.model.config, "model_type", ""))
    cls = family_class(model_type)
    name = cls.model_types[0] if cls.model_types else f"generic ({model_type})"
    edges = family.image_edges()
    tokens: dict[str, int] = {}
    if edges is not None:
        for detail, edge in zip(("low", "high"), edges, strict=True):
            tokens[detail] = _image_tokens(preparer, _fit(probe, edge))
    return ModelDescription(name, family.native_video, edges, tokens, directory)


def _fit(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """As media/resize.fit: the longest side scaled down to ``edge``, never enlarged."""
    width, height = size
    if max(size) <= edge:
        return size
    scale = edge / max(size)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _image_tokens(preparer: object, size: tuple[int, int]) -> int:
    picture = Image.effect_noise(size, 40).convert("RGB")
    media = MediaInput("image", (picture,), f"probe-{size[0]}x{size[1]}")
    prompt = Prompt((Message("user", (MediaPart(0),)),), (media,))
    return int(preparer.prepare(prompt).usage.image_tokens)  # type: ignore[attr-defined]
