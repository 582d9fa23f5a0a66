"""The hook where a prefix KV cache plugs into prefill. ``NoPrefixCache`` is the default.

A cache hit hands prefill the KV of the prompt's first ``num_tokens`` tokens, so only the rest is
run through the model. Keys must fold in the tenant and the identities of the media inside the
prefix (``PreparedPrompt.media_identities``): equal token ids with different pictures are
different prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from vlmserve.engine.local.prompt import PreparedPrompt


@dataclass(frozen=True, slots=True)
class PrefixHit:
    num_tokens: int  # 0 < num_tokens < prompt length: at least one token is always recomputed
    cache: Any  # a DynamicCache holding exactly those tokens, owned by the caller from now on
    rope_delta: int  # the position offset decode steps add (M-RoPE families; else 0)


class PrefixCache(Protocol):
    def match(self, prompt: PreparedPrompt, tenant: str) -> PrefixHit | None:
        """The longest cached prefix of ``prompt``, or None.

        The returned cache is the caller's to extend: an implementation hands out a copy (or
        reference-counted blocks), never the stored entry itself.
        """
        ...

    def store(self, prompt: PreparedPrompt, tenant: str, cache: Any, rope_delta: int) -> None:
        """Offer the KV of ``prompt`` right after its prefill (it holds only prompt tokens).

        Called before any decoding step extends ``cache``; an implementation that keeps it must
        copy what it keeps. May ignore the offer.
        """


class NoPrefixCache:
    def match(self, prompt: PreparedPrompt, tenant: str) -> PrefixHit | None:
        return None

    def store(self, prompt: PreparedPrompt, tenant: str, cache: Any, rope_delta: int) -> None:
        return None
