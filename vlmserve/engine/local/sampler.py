"""Logits of a sequence's rows (one per live choice) → next token ids.

Order: per-sequence logits processors (grammar masks plug in here), OpenAI penalties on the counts
of generated tokens, then greedy (temperature 0) or temperature + top-p sampling from the
sequence's own seeded generator, so a seed reproduces its output.

The wire bounds every parameter (``protocol/chat.py``); this module still cannot be made to fail a
batch: a temperature below ``GREEDY_TEMPERATURE`` is greedy, any integer seed is folded into the
generator's 64-bit range, and probabilities that are not finite (a model or logits processor
producing NaN) fail that one sequence with a message, never ``torch.multinomial``'s crash.
"""

from __future__ import annotations

from typing import Protocol

import torch

from vlmserve.engine.types import SamplingParams
from vlmserve.errors import InternalError

GREEDY_TEMPERATURE = 1e-5  # below it logits / temperature overflows float32


class LogitsProcessor(Protocol):
    def __call__(self, logits: torch.Tensor, rows: list[int], output_ids: list[list[int]]) -> None:
        """Edit ``logits`` (live rows x vocab, float32) in place.

        ``rows[i]`` is the choice index of logits row ``i`` and ``output_ids[i]`` what it generated
        so far; a grammar processor masks tokens its matcher would reject.
        """


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams) -> None:
    """OpenAI semantics: logit -= count * frequency_penalty + (count > 0) * presence_penalty."""
    if params.frequency_penalty:
        logits -= counts * params.frequency_penalty
    if params.presence_penalty:
        logits -= (counts > 0).to(logits.dtype) * params.presence_penalty


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """One token id per row of ``logits`` (float32)."""
    if not params.temperature >= GREEDY_TEMPERATURE:  # NaN included
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        probs = _top_p(probs, params.top_p)
    _check_probs(probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_probs(probs: torch.Tensor) -> None:
    """The last guard before ``multinomial``: every row finite and not all zero (one NaN or inf
    makes its row's sum NaN or inf; softmax is never negative), with one device sync."""
    totals = probs.sum(dim=-1)
    if bool(((totals > 0) & torch.isfinite(totals)).all()):
        return
    raise InternalError(
        "Sampling failed for this request: the model produced invalid probabilities (NaN, "
        "infinite or all zero). Retry with a different temperature or top_p, or with "
        "temperature 0; other requests are unaffected."
    )


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
    drop[..., 0] = False  # the most likely token always survives
    sorted_probs[drop] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed % 2**64)  # any integer; negative seeds stay distinct
    return generator
