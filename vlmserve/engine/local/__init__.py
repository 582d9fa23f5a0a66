"""The embedded engine: a transformers vision-language model behind ``EngineClient``.

engine.py (async facade) → core.py (step thread) → scheduler.py (who runs) / sequence.py
(per-request state) / model_runner.py (tensors) / sampler.py; prompt.py renders and measures
prompts; family.py holds what differs between model families; loader.py loads the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmserve.engine.local.engine import LocalEngine

__all__ = ["LocalEngine"]


def __getattr__(name: str) -> Any:
    # Lazy: remote mode imports only counter.py/prompt.py from here, not the model runner.
    if name == "LocalEngine":
        from vlmserve.engine.local.engine import LocalEngine

        return LocalEngine
    raise AttributeError(name)
