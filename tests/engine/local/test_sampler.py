"""Sampling: penalties follow OpenAI's formula, top-p keeps the best token, seeds reproduce."""

from __future__ import annotations

import pytest
import torch

from vlmserve.engine.local.sampler import apply_penalties, make_generator, sample
from vlmserve.engine.types import SamplingParams
from vlmserve.errors import InternalError


def test_penalties_subtract_count_times_frequency_plus_presence() -> None:
    logits = torch.zeros(1, 4)
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
    apply_penalties(logits, counts, SamplingParams(frequency_penalty=0.5, presence_penalty=1.0))
    assert logits.tolist() == [[0.0, -1.5, -2.5, 0.0]]


def test_temperature_zero_is_greedy() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, 0.0, 0.0]])
    params = SamplingParams(temperature=0.0)
    assert sample(logits, params, None).tolist() == [1, 0]


def test_tiny_top_p_keeps_only_the_most_likely_token() -> None:
    logits = torch.tensor([[1.0, 2.0, 1.5, 0.0]]).repeat(50, 1)
    params = SamplingParams(temperature=1.0, top_p=0.0)
    tokens = sample(logits, params, make_generator(0, torch.device("cpu")))
    assert set(tokens.tolist()) == {1}


def test_top_p_never_samples_outside_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    params = SamplingParams(temperature=1.0, top_p=0.75)
    tokens = sample(logits, params, make_generator(1, torch.device("cpu")))
    assert set(tokens.tolist()) == {0, 1}


def test_same_seed_same_tokens() -> None:
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, top_p=1.0)

    def draw(seed: int) -> list[int]:
        return sample(logits, params, make_generator(seed, torch.device("cpu"))).tolist()

    assert draw(5) == draw(5) != draw(6)


@pytest.mark.parametrize("temperature", [1e-300, 2.2e-309, 5e-324, 1e-9, float("nan")])
def test_temperature_below_epsilon_is_greedy_not_nan(temperature: float) -> None:
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, 0.0, 0.0]])
    params = SamplingParams(temperature=temperature, top_p=0.9)
    tokens = sample(logits, params, make_generator(0, torch.device("cpu")))
    assert tokens.tolist() == [1, 0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_fail_the_request_with_a_message(bad: float) -> None:
    logits = torch.tensor([[0.0, bad, 1.0]])
    with pytest.raises(InternalError, match="invalid probabilities"):
        sample(logits, SamplingParams(temperature=1.0), make_generator(0, torch.device("cpu")))


def test_fully_masked_logits_fail_the_request_with_a_message() -> None:
    logits = torch.full((1, 4), float("-inf"))
    with pytest.raises(InternalError, match="invalid probabilities"):
        sample(logits, SamplingParams(temperature=1.0), make_generator(0, torch.device("cpu")))


@pytest.mark.parametrize("seed", [2**64 - 1, 2**64, -1, -(2**63), 10**30, -(10**30)])
def test_any_integer_seed_makes_a_generator(seed: int) -> None:
    make_generator(seed, torch.device("cpu"))


def test_negative_seed_differs_from_its_absolute_value() -> None:
    a = make_generator(-5, torch.device("cpu")).initial_seed()
    b = make_generator(5, torch.device("cpu")).initial_seed()
    assert a != b
