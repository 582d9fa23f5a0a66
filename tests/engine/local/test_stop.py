"""StopMatcher: output is cut before a stop string and never shows part of one."""

from __future__ import annotations

from vlmserve.engine.local.stop import StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.feed(p) for p in pieces)


def test_stop_string_split_across_pieces_is_never_emitted() -> None:
    matcher = StopMatcher(("END",))
    out = []
    for piece in ["hello E", "N", "D and more"]:
        out.append(matcher.feed(piece))
    assert out == ["hello ", "", ""]
    assert matcher.is_stopped


def test_text_held_back_for_a_possible_stop_is_released_when_it_is_not_one() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.feed("abc E") == "abc "
    assert matcher.feed("N") == ""
    assert matcher.feed("x") == "ENx"
    assert not matcher.is_stopped


def test_held_back_tail_is_flushed_at_the_end() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.feed("abc EN") == "abc "
    assert matcher.flush() == "EN"


def test_earliest_of_several_stop_strings_wins() -> None:
    matcher = StopMatcher(("world", "lo w"))
    assert feed_all(matcher, ["hel", "lo world"]) == "hel"
    assert matcher.is_stopped and matcher.flush() == ""


def test_stop_string_inside_one_piece_cuts_the_piece() -> None:
    matcher = StopMatcher(("\n\n",))
    assert matcher.feed("one\n\ntwo") == "one"


def test_no_stop_strings_pass_everything_through() -> None:
    matcher = StopMatcher(("",))
    assert feed_all(matcher, ["a", "b"]) == "ab" and matcher.flush() == ""
