"""The embedded engine: a transformers vision-language model behind ``EngineClient``.

engine.py (async facade) → core.py (step thread) → scheduler.py (who runs) / sequence.py
(per-request state) / model_runner.py (tensors) / sampler.py; prompt.py renders and measures
prompts; family.py holds what differs between model families; loader.py loads the model.
"""

from vlmserve.engine.local.engine import LocalEngine

__all__ = ["LocalEngine"]
