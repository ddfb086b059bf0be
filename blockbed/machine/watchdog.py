"""The run's wall-clock deadline, kept by one thread instead of unicorn's per-slice timer.

Unicorn's own timeout (``emu_start``'s ``timeout`` argument) starts a thread
for every ``emu_start`` and joins it when the slice ends: about 140 us per
slice, measured against 9 us without one (bare unicorn 2.1.4, a slice of two
instructions).  A Linux guest ends three or four slices per system call and
interrupt, so that thread was a tenth of a ``dd`` block's time.

The machine's slices therefore run without a timeout, and this one thread,
started once per :meth:`Machine.run`, stops the CPU when the deadline passes:
it calls :meth:`CPU.stop_for_deadline` (unicorn's ``uc_emu_stop``, which is
what unicorn's timer thread calls too), and repeats that every few
milliseconds until the run loop has seen it, so a deadline that falls
between two slices cannot be missed.  As before, the deadline only ever ends
the run (see the run loop in board.py for why a stop that lands inside a
device callback must not be resumed).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

REPEAT_S = 0.005            # how often the stop is repeated until the run loop ends


class Watchdog:
    """Calls ``stop()`` from its own thread once ``deadline`` (time.monotonic) has
    passed, and again every REPEAT_S seconds, until :meth:`cancel`."""

    def __init__(self, deadline: float, stop: Callable[[], None]):
        self._deadline = deadline
        self._stop = stop
        self._cancelled = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="blockbed-deadline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = self._deadline - time.monotonic()
        if wait > 0 and self._cancelled.wait(wait):
            return
        self.fired = True
        while True:
            self._stop()
            if self._cancelled.wait(REPEAT_S):
                return

    def cancel(self) -> None:
        self._cancelled.set()
        self._thread.join()
