"""Which prompts may share a left-padded prefill forward: similar lengths only."""

from __future__ import annotations

from vlmserve.engine.local.model_runner import PAD_SLACK, similar_lengths


def _groups(lengths: list[int]) -> list[list[int]]:
    return similar_lengths(lengths, lambda n: n)


def test_a_long_prompt_is_not_padded_together_with_short_ones() -> None:
    assert _groups([10, 500, 12]) == [[500], [12, 10]]


def test_prompts_of_similar_length_share_a_forward_longest_first() -> None:
    assert _groups([95, 100, 98]) == [[100, 98, 95]]


def test_no_group_computes_more_than_the_slack_over_its_tokens() -> None:
    lengths = [100, 98, 95, 40, 38, 10, 9, 3, 300, 120, 7, 7]
    groups = _groups(lengths)
    assert sorted(n for g in groups for n in g) == sorted(lengths)  # none lost or repeated
    for group in groups:
        assert len(group) * max(group) <= PAD_SLACK * sum(group)
