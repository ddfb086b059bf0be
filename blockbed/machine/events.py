"""The deterministic event queue.

Time in the machine is *virtual*: it advances by one tick at every exit to
Python (port I/O, MMIO) and jumps to the next event while the CPU halts.
Devices schedule completions ``delay`` ticks ahead; a seeded
:class:`random.Random` (``jitter``) lets them vary delays so that requests in
flight complete out of order.  Nothing depends on the wall clock, so the same
guest, disks and seed give the same run, exit for exit.
"""

from __future__ import annotations

import heapq
import random
from typing import Any, Callable

from .. import trace


class Event:
    __slots__ = ("due", "seq", "callback", "args", "cancelled", "name")

    def __init__(self, due: int, seq: int, callback: Callable[..., Any], args: tuple, name: str):
        self.due = due
        self.seq = seq
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.name = name

    def __lt__(self, other: "Event") -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


class EventQueue:
    def __init__(self, seed: int = 0):
        self.now = 0
        self.seed = seed
        self.rng = random.Random(seed)
        self._heap: list[Event] = []
        self._seq = 0
        self.executed = 0

    def schedule(self, delay: int, callback: Callable[..., Any], *args: Any, name: str = "") -> Event:
        """Run ``callback(*args)`` ``delay`` ticks from now (0 = at the next tick)."""
        self._seq += 1
        ev = Event(self.now + max(0, int(delay)), self._seq, callback, args,
                   name or getattr(callback, "__qualname__", "event"))
        heapq.heappush(self._heap, ev)
        return ev

    def cancel(self, ev: Event) -> None:
        ev.cancelled = True

    def jitter(self, lo: int, hi: int) -> int:
        """A seeded delay in ``[lo, hi]`` for out-of-order completion."""
        return self.rng.randint(lo, hi)

    def pending(self) -> bool:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return bool(self._heap)

    def next_due(self) -> int | None:
        return self._heap[0].due if self.pending() else None

    def tick(self) -> None:
        """One exit happened: advance time and run what is due."""
        self.now += 1
        if self._heap and self._heap[0].due <= self.now:
            self.run_due()

    def run_due(self) -> int:
        n = 0
        heap = self._heap
        while heap and heap[0].due <= self.now:
            ev = heapq.heappop(heap)
            if ev.cancelled:
                continue
            if trace.enabled:
                trace.leave()
                trace.emit("event.run", callback=ev.name, now=self.now)
            ev.callback(*ev.args)
            n += 1
        self.executed += n
        return n

    def skip_to_next(self) -> bool:
        """Jump time to the next event and run it (the CPU is halted). False if none."""
        due = self.next_due()
        if due is None:
            return False
        self.now = max(self.now, due)
        self.run_due()
        return True

    def step(self, ticks: int = 1) -> None:
        """Advance time by ``ticks`` and run what became due (qtest's clock_step)."""
        self.now += ticks
        self.run_due()
