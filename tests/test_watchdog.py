"""The run's deadline thread (machine/watchdog.py); the machine side is in
test_machine.py (a timeout ends an endless loop; slices pass no timeout)."""

from __future__ import annotations

import time

from blockbed.machine.watchdog import REPEAT_S, Watchdog


def test_stop_repeats_after_the_deadline_until_cancelled():
    calls = []
    w = Watchdog(time.monotonic() + 0.05, lambda: calls.append(time.monotonic()))
    time.sleep(0.05 + 6 * REPEAT_S)
    w.cancel()
    n = len(calls)
    assert w.fired and n >= 2              # a stop that fell between slices is made again
    time.sleep(3 * REPEAT_S)
    assert len(calls) == n                 # nothing after cancel


def test_cancelled_before_the_deadline_never_stops():
    calls = []
    w = Watchdog(time.monotonic() + 30, lambda: calls.append(1))
    w.cancel()
    assert not w.fired and calls == []
