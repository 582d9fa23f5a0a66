"""Stop strings: cut the output before the first stop string, never emitting part of one.

Text that could be the start of a stop string is held back until the next piece shows whether it
is one; when generation ends for another reason the held-back text is released.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""  # all text seen so far
        self.num_emitted = 0  # characters of ``text`` already released
        self.is_stopped = False

    def feed(self, piece: str) -> str:
        """Add decoded text; return what may be released now. Sets ``is_stopped`` on a match."""
        if self.is_stopped or not piece:
            return ""
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0) + 1)
        self.text += piece
        cut = self._first_match(start)
        if cut is not None:
            self.is_stopped = True
            return self._release(cut)
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """Release the held-back tail (generation ended without completing a stop string)."""
        return "" if self.is_stopped else self._release(len(self.text))

    def _first_match(self, start: int) -> int | None:
        found = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, end: int) -> str:
        end = max(end, self.num_emitted)
        out = self.text[self.num_emitted : end]
        self.num_emitted = end
        return out
