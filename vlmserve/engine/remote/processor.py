"""Where a remote engine finds its model's processor and tokenizer on this machine, if anywhere.

With them, vlmserve sizes images and counts tokens exactly as the local engine would
(``engine/local/counter.py``); without them it relies on the replicas' counts. Deciding which
must not import torch or touch the network: it only looks at files, in a local directory or in
the Hugging Face cache (a hub id downloaded before).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

# Each group needs one file present: the model config names the family, the processor config
# holds the image processor's sizes, the tokenizer counts text.
REQUIRED_FILES: tuple[tuple[str, ...], ...] = (
    ("config.json",),
    ("processor_config.json", "preprocessor_config.json"),
    ("tokenizer.json", "tokenizer_config.json"),
)

TokenCounts = Literal["local processor", "upstream"]


def local_processor(model: str) -> Path | None:
    """The directory with ``model``'s config, processor and tokenizer files, or None."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path if _complete(path) else None
    snapshot = _cached_snapshot(model)
    return snapshot if snapshot is not None and _complete(snapshot) else None


def token_counts(model: str) -> TokenCounts:
    """Who counts a remote engine's prompt tokens: its local processor, or the upstream."""
    return "local processor" if local_processor(model) is not None else "upstream"


def missing_files(directory: Path) -> list[str]:
    """The required file groups absent from ``directory``, spelled for an error message."""
    return [" or ".join(group) for group in REQUIRED_FILES if not _has_any(directory, group)]


def _complete(directory: Path) -> bool:
    return not missing_files(directory)


def _has_any(directory: Path, names: Sequence[str]) -> bool:
    return any((directory / name).is_file() for name in names)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot directory of ``repo_id`` in the Hugging Face cache, without any download."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - installed with transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None
