"""Load a model and its processor from a hub id or a local directory, on the chosen device/dtype.

Downloads show huggingface_hub's progress bars and loading shows transformers' "Loading weights"
bar; both write to stderr.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from huggingface_hub import constants as hub_constants

from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.local.cpu_features import cpu_has_native_bf16
from vlmserve.engine.local.families import Family, family_for
from vlmserve.engine.local.packed_linear import can_pack, pack_language_model
from vlmserve.errors import ModelUnavailableError
from vlmserve.settings import EngineSettings

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 5.0  # one attempt: a machine without the hub learns it in seconds, not minutes
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: Any
    processor: Any
    family: Family
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: frozenset[int]
    max_model_len: int
    cache_kwarg: str  # "cache" (transformers >= 5.x) or "past_key_values"

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def load_model(binding: EngineBinding, settings: EngineSettings) -> LoadedModel:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = resolve_device(_pick(binding.device, settings.device))
    dtype = resolve_dtype(_pick(binding.dtype, settings.dtype), device)
    source = locate(binding.model)
    log.info("loading %s on %s as %s", source, device, dtype)
    processor = AutoProcessor.from_pretrained(source)
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
    check_family(binding, model.config)
    model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    if settings.cpu_packed_linear and can_pack(device, dtype):
        # A tied output head is packed as a copy (oneDNN computes the one-row product ~1.7x
        # faster than MKL) when that copy is small beside the machine's memory.
        pack_language_model(model, tied_head_max_bytes=physical_memory() // 16)
    return LoadedModel(
        model=model,
        processor=processor,
        family=family_for(model, processor),
        device=device,
        dtype=dtype,
        eos_token_ids=eos_token_ids(model, processor.tokenizer),
        max_model_len=max_model_len(model.config),
        cache_kwarg=_cache_kwarg(model),
    )


def check_family(binding: EngineBinding, config: Any) -> None:
    """The catalogue may pin a binding to a family; a model of another family is refused."""
    model_type = getattr(config, "model_type", "")
    if binding.family is not None and model_type != binding.family:
        raise ValueError(
            f"the catalogue binds {binding.model} as family {binding.family!r}, but its "
            f"config.json says model_type {model_type!r}; fix the binding's family or model"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto": bfloat16 on CUDA, and on a CPU only where it computes bf16 natively."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a turn: generation_config's (an int or a list) and the tokenizer's."""
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def max_model_len(config: Any) -> int:
    text_config = config.get_text_config(decoder=True)
    for source in (text_config, config):
        value = getattr(source, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(
        "the model config has no max_position_embeddings: its context window is unknown"
    )


def physical_memory() -> int:
    """Bytes of RAM this machine has."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cache_kwarg(model: Any) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _pick(binding_value: str, settings_value: str) -> str:
    # The catalogue binding names the model's own needs; settings are the machine-wide default.
    return binding_value if binding_value != "auto" else settings_value


def locate(model: str, timeout_s: float = HUB_TIMEOUT_S) -> str:
    """Where to load ``model`` from: its directory, the hub id (reachable: transformers then
    downloads it with progress bars), or the hub cache's copy when the hub cannot be reached.

    One request to the hub with a short timeout decides; raises ``ModelUnavailableError`` with
    one paragraph naming the model, the cause and the two ways forward, instead of
    huggingface_hub's minutes of retries and a traceback.
    """
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailableError(
            _unavailable(model, f"{path} is not a directory on this machine")
        )
    try:
        status = _probe_hub(model, timeout_s)
    except httpx.HTTPError as exc:
        cached = _cached_copy(model)
        if cached is not None:
            log.warning("the model hub is unreachable (%s); loading %s from the cache", exc, model)
            return cached
        cause = (
            f"the model hub ({hub_constants.ENDPOINT}) cannot be reached from this machine "
            f"({type(exc).__name__}: {exc or 'no answer'}), and the model is not in the local "
            "Hugging Face cache"
        )
        raise ModelUnavailableError(_unavailable(model, cause)) from None
    if status in (401, 403, 404):
        cause = (
            f"the model hub answered {status}: no such model, or it is gated or private "
            "(accept its licence on the hub and log in with `hf auth login`)"
        )
        raise ModelUnavailableError(_unavailable(model, cause))
    return model


def _probe_hub(model: str, timeout_s: float) -> int:
    """One request, no retries: the hub's answer for ``model`` (raises ``httpx.HTTPError``)."""
    from huggingface_hub import get_token

    token = get_token()
    headers = {"authorization": f"Bearer {token}"} if token else {}
    url = f"{hub_constants.ENDPOINT}/api/models/{model}"
    response = httpx.get(url, headers=headers, timeout=timeout_s, follow_redirects=True)
    if response.status_code >= 500:
        raise httpx.HTTPStatusError(
            f"the hub answered {response.status_code}", request=response.request, response=response
        )
    return response.status_code


def _cached_copy(model: str) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached (or a broken cache entry): there is no copy to use
        return None


def _unavailable(model: str, cause: str) -> str:
    return (
        f"vlmserve cannot load the model {model!r}: {cause}. Two ways forward: serve a model "
        "directory you already have with `vlmserve serve --model ./local/dir` (a copy of the "
        "model downloaded elsewhere, with its config, weights and processor files), or, for a "
        "smoke test without real weights, build a random-weight model offline with "
        "`vlmserve make-dummy-model ./dummy-model` and start `vlmserve serve --model "
        "./dummy-model`."
    )
