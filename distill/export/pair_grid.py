"""The order a question's candidate pairs are offered in, addressed by position, never built.

A group of `a` chosen and `b` rejected rows has a x b candidate pairs, offered in spread order (by
anti-diagonal i + j, then by i) so that the per-task cap spreads over rows instead of pairing the
first chosen row with every rejected one. An audit question with a couple of hundred reviews has
thousands of candidates, of which the cap takes a handful; a task retried ten thousand times would
have a hundred million. Once the cap is reached, each later pair only tells its two rows why they
were not used, and a row keeps the first reason it is told, so the pairer walks the pairs one by one
only until then and afterwards asks each row for the first later pair that holds it
(`after_chosen` / `after_rejected`): work and memory in rows, not in pairs.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
Pair = tuple[int, T, T]  # (position, chosen, rejected)


class Grid(Generic[T]):
    """chosen x rejected in spread order; positions start at `offset` (a grid offered after another
    goes on from where that one ends)."""

    def __init__(self, chosen: Sequence[T], rejected: Sequence[T], offset: int = 0) -> None:
        self.chosen, self.rejected, self.offset = chosen, rejected, offset
        a, b = len(chosen), len(rejected)
        # position (within the grid) of each anti-diagonal's first pair
        starts = [0]
        if a and b:
            for s in range(a + b - 1):
                starts.append(starts[-1] + min(a - 1, s) - max(0, s - b + 1) + 1)
        self._starts = starts
        self.end = offset + starts[-1]  # one past the last position

    def position(self, i: int, j: int) -> int:
        s = i + j
        return self.offset + self._starts[s] + i - max(0, s - len(self.rejected) + 1)

    def __iter__(self) -> Iterator[Pair[T]]:
        a, b = len(self.chosen), len(self.rejected)
        n = self.offset
        for s in range(a + b - 1 if a and b else 0):
            for i in range(max(0, s - b + 1), min(a, s + 1)):
                yield n, self.chosen[i], self.rejected[s - i]
                n += 1

    def after_chosen(self, i: int, after: int) -> Iterator[Pair[T]]:
        """The pairs holding chosen row i at positions after `after`, in order."""
        b = len(self.rejected)
        first = bisect_right(range(b), after, key=lambda j: self.position(i, j))
        for j in range(first, b):
            yield self.position(i, j), self.chosen[i], self.rejected[j]

    def after_rejected(self, j: int, after: int) -> Iterator[Pair[T]]:
        """The pairs holding rejected row j at positions after `after`, in order."""
        a = len(self.chosen)
        first = bisect_right(range(a), after, key=lambda i: self.position(i, j))
        for i in range(first, a):
            yield self.position(i, j), self.chosen[i], self.rejected[j]
