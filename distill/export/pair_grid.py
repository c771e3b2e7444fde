"""The order a question's candidate pairs are offered in, addressed by position, never built.

A group of `a` chosen and `b` rejected rows has a x b candidate pairs, offered in spread order (by
anti-diagonal i + j, then by i) so that the per-task cap spreads over rows instead of pairing the
first chosen row with every rejected one. An audit question with a couple of hundred reviews has
thousands of candidates, of which the cap takes a handful; a task retried ten thousand times would
have a hundred million. Once the cap is reached, each later pair only tells its two rows why they
were not used, and a row keeps the first reason it is told, so the pairer walks the pairs one by one
only until then and afterwards asks each row for the first later pair that holds it
(`after_chosen` / `after_rejected`): work and memory in rows, not in pairs.

A grid may admit only the pairs whose two rows differ in every one of some keys (cross-source
pairs: another source and another task). Filtering the walk instead would cost a x b steps when
few pairs are admitted (a reviewer's thousands of verdicts on one question, all from one source,
admit none), so the grid jumps over runs of rows that share a key with the other side: each row
side keeps, per key, where the next row with another value starts.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
Pair = tuple[int, T, T]  # (position, chosen, rejected)
Key = Callable[[T], Hashable]


class _Side(Generic[T]):
    """One side's values of the keys a pair must differ in, and where each run of a value ends."""

    def __init__(self, rows: Sequence[T], keys: Sequence[Key[T]]) -> None:
        self.n = len(rows)
        self.values = [[key(row) for row in rows] for key in keys]
        self.run_end: list[array[int]] = []
        for column in self.values:
            ends = array("q", bytes(8 * self.n))
            nxt = self.n
            for y in range(self.n - 1, -1, -1):
                if y + 1 < self.n and column[y + 1] != column[y]:
                    nxt = y + 1
                ends[y] = nxt
            self.run_end.append(ends)

    def of(self, y: int) -> tuple[Hashable, ...]:
        return tuple(column[y] for column in self.values)

    def next_admitted(self, other: tuple[Hashable, ...], y: int) -> int:
        """The first row from `y` on that differs from `other` in every key (n: none)."""
        values, run_end, n = self.values, self.run_end, self.n
        while y < n:
            for k, value in enumerate(other):
                if values[k][y] == value:
                    y = run_end[k][y]  # every row to the end of this run shares the value
                    break
            else:
                return y
        return n


class Grid(Generic[T]):
    """chosen x rejected in spread order; positions start at `offset` (a grid offered after another
    goes on from where that one ends). With `differ`, only the pairs whose rows differ in every
    key are walked; positions stay those of the full grid."""

    def __init__(self, chosen: Sequence[T], rejected: Sequence[T], offset: int = 0,
                 differ: Sequence[Key[T]] = ()) -> None:
        self.chosen, self.rejected, self.offset = chosen, rejected, offset
        a, b = len(chosen), len(rejected)
        # position (within the grid) of each anti-diagonal's first pair
        starts = [0]
        if a and b:
            for s in range(a + b - 1):
                starts.append(starts[-1] + min(a - 1, s) - max(0, s - b + 1) + 1)
        self._starts = starts
        self.end = offset + starts[-1]  # one past the last position
        self._sides = (_Side(chosen, differ), _Side(rejected, differ)) if differ and a and b else None

    def position(self, i: int, j: int) -> int:
        s = i + j
        return self.offset + self._starts[s] + i - max(0, s - len(self.rejected) + 1)

    def __iter__(self) -> Iterator[Pair[T]]:
        if self._sides is not None:
            yield from self._admitted()
            return
        a, b = len(self.chosen), len(self.rejected)
        n = self.offset
        for s in range(a + b - 1 if a and b else 0):
            for i in range(max(0, s - b + 1), min(a, s + 1)):
                yield n, self.chosen[i], self.rejected[s - i]
                n += 1

    def _admitted(self) -> Iterator[Pair[T]]:
        """The admitted pairs in spread order: a merge of each chosen row's admitted partners."""
        assert self._sides is not None
        chosen_side, rejected_side = self._sides
        b = rejected_side.n
        heap = [(i + j, i, j) for i in range(chosen_side.n)
                if (j := rejected_side.next_admitted(chosen_side.of(i), 0)) < b]
        heapq.heapify(heap)
        while heap:
            _, i, j = heap[0]
            yield self.position(i, j), self.chosen[i], self.rejected[j]
            j = rejected_side.next_admitted(chosen_side.of(i), j + 1)
            if j < b:
                heapq.heapreplace(heap, (i + j, i, j))
            else:
                heapq.heappop(heap)

    def _at(self, after: int) -> tuple[int, int]:
        """(anti-diagonal, chosen row) of the pair at position `after`; (-1, -1) before the first,
        (a + b, a) past the last: a pair (i, j) comes after it iff (i + j, i) is greater."""
        a, b = len(self.chosen), len(self.rejected)
        p = after - self.offset
        if p < 0:
            return -1, -1
        if p >= self._starts[-1]:
            return a + b, a
        s = bisect_right(self._starts, p) - 1
        return s, p - self._starts[s] + max(0, s - b + 1)

    def after_chosen(self, i: int, after: int) -> Iterator[Pair[T]]:
        """The (admitted) pairs holding chosen row i at positions after `after`, in order."""
        s, at = self._at(after)
        first = max(0, s - i + (0 if i > at else 1))
        for j in self._partners(first, 0, i):
            yield self.position(i, j), self.chosen[i], self.rejected[j]

    def after_rejected(self, j: int, after: int) -> Iterator[Pair[T]]:
        """The (admitted) pairs holding rejected row j at positions after `after`, in order."""
        s, at = self._at(after)
        first = max(0, s - j + (0 if s - j > at else 1))
        for i in self._partners(first, 1, j):
            yield self.position(i, j), self.chosen[i], self.rejected[j]

    def _partners(self, first: int, side: int, row: int) -> Iterator[int]:
        """The rows of the other side, from `first` on, that `row` of `side` (0 chosen, 1 rejected)
        may pair with."""
        n = len(self.rejected if side == 0 else self.chosen)
        if self._sides is None:
            yield from range(first, n)
            return
        own, other = self._sides[side].of(row), self._sides[1 - side]
        while (first := other.next_admitted(own, first)) < n:
            yield first
            first += 1
