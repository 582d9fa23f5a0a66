"""Write a complete, offline model directory with random weights.

The directory holds what a hub download holds and loads the same way
(``AutoProcessor.from_pretrained(path)``, ``AutoModelForImageTextToText.from_pretrained(path)``):
config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
processor and image/video processor configs, and the chat template. Everything except the
tokenizer and template files is written by transformers' own ``save_pretrained``, so the layout
is whatever the installed transformers reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vlmserve.dummy import builders
from vlmserve.dummy.families import FAMILY_BUILDERS, Family, TokenizerFiles
from vlmserve.dummy.shapes import SHAPES_BY_FAMILY as FIRST_SHAPES
from vlmserve.dummy.tokenizer import build_tokenizer

# The first two families live in families.py/shapes.py; later ones in builders/, one module each.
SHAPES_BY_FAMILY: dict[str, dict[str, Any]] = {**FIRST_SHAPES, **builders.SHAPES}
ALL_BUILDERS: dict[str, Family] = {**FAMILY_BUILDERS, **builders.BUILDERS}

FAMILIES: tuple[str, ...] = tuple(SHAPES_BY_FAMILY)
SHAPES: tuple[str, ...] = tuple(
    dict.fromkeys(s for shapes in SHAPES_BY_FAMILY.values() for s in shapes)
)
FAMILY_SHAPES: dict[str, tuple[str, ...]] = {f: tuple(s) for f, s in SHAPES_BY_FAMILY.items()}


def make_dummy_model(path: Path, family: str, shape: str = "tiny", *, seed: int = 0) -> Path:
    """Write a model directory at ``path`` (which must not exist or be empty) and return it.

    Same family, shape and seed give the same weights. Raises ValueError for an unknown family or
    shape, a shape of another family, or a non-empty ``path``.
    """
    dims = resolve_shape(family, shape)
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write_model_dir(staging, ALL_BUILDERS[family], dims, seed)
        if path.exists():
            path.rmdir()  # empty, checked above
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def resolve_shape(family: str, shape: str) -> Any:
    if family not in SHAPES_BY_FAMILY:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    shapes = SHAPES_BY_FAMILY[family]
    if shape not in shapes:
        if shape in SHAPES:
            owners = [f for f, s in SHAPES_BY_FAMILY.items() if shape in s]
            raise ValueError(
                f"shape {shape!r} belongs to family {', '.join(owners)}, not {family!r}; "
                f"{family} shapes are {', '.join(shapes)}"
            )
        raise ValueError(f"unknown shape {shape!r}; {family} shapes are {', '.join(shapes)}")
    return shapes[shape]


def _check_target(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} already exists and is not an empty directory; remove it first")


def _write_model_dir(path: Path, family: Family, shape: Any, seed: int) -> None:
    backend = build_tokenizer(family.tokenizer_spec(shape))
    tokenizer = _wrap_tokenizer(backend, family.tokenizer_files(shape))
    processor = family.processor(shape, tokenizer)
    processor.tokenizer.chat_template = processor.chat_template
    processor.save_pretrained(path)
    config = family.config(shape, tokenizer)
    model = _random_model(family.model_class, config, seed, getattr(torch, shape.dtype))
    model.generation_config = family.generation_config(tokenizer)
    model.save_pretrained(path)
    _make_readable(path)


def _wrap_tokenizer(backend: Tokenizer, files: TokenizerFiles) -> PreTrainedTokenizerBase:
    """The transformers class the real release names, around the offline backend."""
    tokenizer_class = getattr(transformers, files.tokenizer_class)
    return tokenizer_class(
        tokenizer_object=backend,
        **files.special,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        errors="replace",
        model_max_length=files.model_max_length,
    )


def _random_model(
    model_class: type[PreTrainedModel], config: Any, seed: int, dtype: torch.dtype
) -> PreTrainedModel:
    """transformers' own initialisation (normal(0, initializer_range), unit norms) under a seed."""
    with torch.random.fork_rng(devices=[]), _default_dtype(dtype):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _make_readable(path: Path) -> None:
    """mkdtemp and some writers create owner-only modes; a model directory is a shared artefact."""
    path.chmod(0o755)
    for file in path.iterdir():
        file.chmod(0o644)


def disk_size(path: Path) -> int:
    """Bytes used by the files of a model directory."""
    return sum(os.path.getsize(p) for p in Path(path).rglob("*") if p.is_file())
