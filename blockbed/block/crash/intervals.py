"""A small interval map: byte ranges → the write expected there.

Used by the oracle for "the latest durable write covering each sector".
Runs are kept sorted and non-overlapping in three parallel lists, so a lookup
is a ``bisect`` and an update a slice assignment (C speed), never a loop over
sectors.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class IntervalMap(Generic[T]):
    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.vals: list[T] = []

    def __len__(self) -> int:
        return len(self.starts)

    def _span(self, start: int, end: int) -> tuple[int, int]:
        """Indices [i, j) of the runs overlapping [start, end)."""
        i = bisect_right(self.ends, start)
        j = bisect_left(self.starts, end)
        return i, j

    def assign(self, start: int, end: int, val: T,
               keep: Callable[[T, T], bool] | None = None) -> None:
        """Map [start, end) to ``val``; where ``keep(old, val)`` is true the old run stays."""
        if start >= end:
            return
        i, j = self._span(start, end)
        ns: list[int] = []
        ne: list[int] = []
        nv: list[T] = []

        def put(s: int, e: int, v: T) -> None:
            if s >= e:
                return
            if ns and ne[-1] == s and nv[-1] is v:
                ne[-1] = e
            else:
                ns.append(s); ne.append(e); nv.append(v)

        pos = start
        for k in range(i, j):
            s, e, v = self.starts[k], self.ends[k], self.vals[k]
            if s < start:
                put(s, start, v)
            put(pos, max(pos, s), val)            # gap before this run
            lo, hi = max(s, start), min(e, end)
            put(lo, hi, v if keep is not None and keep(v, val) else val)
            pos = hi
            if e > end:
                put(end, e, v)
        if pos < end:
            # the gap after the last overlapping run (runs past `end` were already emitted)
            if ns and ne[-1] > end:
                tail = (ns.pop(), ne.pop(), nv.pop())
                put(pos, end, val)
                put(*tail)
            else:
                put(pos, end, val)
        self.starts[i:j] = ns
        self.ends[i:j] = ne
        self.vals[i:j] = nv

    def runs(self, start: int | None = None, end: int | None = None) -> Iterator[tuple[int, int, T]]:
        """Runs overlapping [start, end), clipped to it (all runs by default)."""
        if start is None:
            yield from zip(self.starts, self.ends, self.vals)
            return
        i, j = self._span(start, end)  # type: ignore[arg-type]
        for k in range(i, j):
            yield max(self.starts[k], start), min(self.ends[k], end), self.vals[k]  # type: ignore[type-var]

    def get(self, offset: int) -> T | None:
        k = bisect_right(self.starts, offset) - 1
        if k >= 0 and self.ends[k] > offset:
            return self.vals[k]
        return None
