"""The remote engine: generation on OpenAI-compatible replicas (vLLM, SGLang, another vlmserve)."""

from vlmserve.engine.remote.engine import RemoteEngine, TokenCounter

__all__ = ["RemoteEngine", "TokenCounter"]
