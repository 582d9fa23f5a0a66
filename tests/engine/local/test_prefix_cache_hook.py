"""The prefix-cache hook: a hit's KV plus the uncached tail gives exactly the uncached output."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.local.helpers import generate, image_prompt, request, text_prompt
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.local.prefix_cache import NoPrefixCache, PrefixHit
from vlmserve.engine.local.prompt import PreparedPrompt


class LastPromptCache:
    """Remembers the last prompt's KV; a repeat of it hits everything after its last media token."""

    def __init__(self) -> None:
        self.entry: tuple[tuple[int, ...], Any, int] | None = None

    def match(self, prompt: PreparedPrompt, tenant: str) -> PrefixHit | None:
        if self.entry is None or self.entry[0] != prompt.token_ids:
            return None
        start = prompt.media_span[1] if prompt.media_span else 1
        num_tokens = max(start, prompt.num_tokens - 3)
        cache = copy.deepcopy(self.entry[1])
        cache.crop(num_tokens - prompt.num_tokens)
        return PrefixHit(num_tokens, cache, self.entry[2])

    def store(self, prompt: PreparedPrompt, tenant: str, cache: Any, rope_delta: int) -> None:
        self.entry = (prompt.token_ids, copy.deepcopy(cache), rope_delta)


@pytest.fixture
def cached_engine(engine: LocalEngine) -> Iterator[LocalEngine]:
    assert engine._core is not None
    engine._core.runner.prefix_cache = LastPromptCache()
    yield engine
    engine._core.runner.prefix_cache = NoPrefixCache()


@pytest.mark.parametrize("make_prompt", [text_prompt, image_prompt])
def test_prefix_hit_gives_the_same_greedy_output(
    cached_engine: LocalEngine, make_prompt: Any
) -> None:
    cold = generate(cached_engine, request(make_prompt(), max_tokens=16, n=2))
    warm = generate(cached_engine, request(make_prompt(), max_tokens=16, n=2))
    assert cold.started is not None and warm.started is not None
    assert cold.started.usage.cached_tokens == 0
    assert 0 < warm.started.usage.cached_tokens < warm.started.usage.prompt_tokens
    assert warm.texts == cold.texts
