"""Routing as pure functions: conversation keys, the ring, bounded load."""

from __future__ import annotations

import dataclasses
import random

from tests.engine.remote.builders import conversation, flat_image, image_input
from vlmserve.engine.remote.router import (
    HashRing,
    capacity,
    choose_bounded,
    conversation_key,
    least_outstanding,
)
from vlmserve.engine.types import MediaPart, Message, Prompt, TextPart

MODEL = "m"
NAMES = ["http://a:8000/v1", "http://b:8000/v1", "http://c:8000/v1"]


def key_of(request: object) -> bytes:
    return conversation_key(request, MODEL, 2)  # type: ignore[arg-type]


def test_later_turns_keep_the_key_of_the_first() -> None:
    image = flat_image((9, 9, 9))
    keys = {key_of(conversation(turn, image)) for turn in range(1, 7)}
    assert len(keys) == 1


def test_key_differs_by_image_system_prompt_tenant_and_model() -> None:
    base = conversation(1, flat_image((1, 1, 1)))
    other_image = conversation(1, flat_image((2, 2, 2)))
    other_system = conversation(1, flat_image((1, 1, 1)), system="Be terse.")
    other_tenant = dataclasses.replace(base, tenant="acme")
    keys = {key_of(r) for r in (base, other_image, other_system, other_tenant)}
    keys.add(conversation_key(base, "other-model", 2))
    assert len(keys) == 5


def test_same_image_same_key_whatever_the_question() -> None:
    image = flat_image((5, 5, 5))
    assert key_of(conversation(1, image, user="alice")) == key_of(
        conversation(1, image, user="bob")
    )


def test_text_only_conversations_are_told_apart_by_their_first_message() -> None:
    assert key_of(conversation(3, None, user="alice")) != key_of(conversation(3, None, user="bob"))
    assert key_of(conversation(1, None, user="bob")) == key_of(conversation(6, None, user="bob"))


def test_image_added_in_a_later_turn_does_not_move_the_conversation() -> None:
    first = conversation(2, flat_image((3, 3, 3)))
    extra = image_input(flat_image((4, 4, 4)))
    later = Message("user", (MediaPart(1), TextPart("and this one?")))
    grown = dataclasses.replace(
        first,
        prompt=Prompt((*first.prompt.messages, later), (*first.prompt.media, extra)),
    )
    assert key_of(first) == key_of(grown)


def test_ring_preference_lists_every_replica_once() -> None:
    ring = HashRing(NAMES, 50)
    for i in range(100):
        order = ring.preference(f"k{i}".encode())
        assert sorted(order) == [0, 1, 2]


def test_ring_spreads_keys_roughly_evenly() -> None:
    ring = HashRing(NAMES, 160)
    firsts = [ring.preference(f"conv{i}".encode())[0] for i in range(3000)]
    shares = [firsts.count(i) / len(firsts) for i in range(3)]
    assert all(0.25 < share < 0.42 for share in shares), shares


def test_removing_a_replica_moves_only_its_own_keys() -> None:
    ring = HashRing(NAMES, 160)
    for i in range(500):
        order = ring.preference(f"conv{i}".encode())
        survivors = [r for r in order if r != 1]
        # with replica 1 down its keys go to their next replica; the others stay put
        chosen = choose_bounded(order, [0, 0, 0], [True, False, True], 1.25)
        assert chosen == survivors[0]


def test_no_replica_above_the_bound_under_a_skewed_workload() -> None:
    ring = HashRing(NAMES, 160)
    rng = random.Random(7)
    hot = [f"hot{i}".encode() for i in range(3)]  # 80 % of traffic on three conversations
    loads = [0, 0, 0]
    in_flight: list[int] = []
    for _ in range(5000):
        key = rng.choice(hot) if rng.random() < 0.8 else f"cold{rng.random()}".encode()
        bound = capacity(sum(loads), 3, 1.25)
        chosen = choose_bounded(ring.preference(key), loads, [True] * 3, 1.25)
        loads[chosen] += 1
        in_flight.append(chosen)
        assert max(loads) <= bound, (loads, bound)
        if len(in_flight) > 40 or rng.random() < 0.3:  # requests complete in random order
            loads[in_flight.pop(rng.randrange(len(in_flight)))] -= 1


def test_over_bound_preferred_replica_falls_back_to_least_outstanding() -> None:
    assert choose_bounded([0, 1, 2], [5, 3, 1], [True] * 3, 1.25) == 2
    assert choose_bounded([0, 1, 2], [3, 3, 1], [True] * 3, 1.25) == 0  # bound ceil(1.25*8/3)=4
    assert least_outstanding([2, 0, 1], [1, 1, 1]) == 2  # ties: the earliest candidate


def test_down_replicas_are_never_chosen() -> None:
    for loads in ([0, 0, 0], [9, 0, 9], [0, 9, 0]):
        assert choose_bounded([1, 0, 2], loads, [True, False, True], 1.25) != 1
