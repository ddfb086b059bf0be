"""Tie the BlockBackend request log to positions in the host log.

The oracle reasons in guest requests (the backend's request log: submit and
completion order, flags, WCE), the crash states in host operations.  To say
"a power cut after host op *p* happened after flush request *F* completed",
every backend event needs the host-log position at which it happened.

:class:`CorrelatedRequestLog` is a :class:`~blockbed.block.backend.RequestLog`
whose sequence counter also samples ``len(host_log)``: the backend draws one
sequence number at submit and one at completion, so ``position_of(seq)`` is
the number of host ops that had completed when that event happened.  Nothing
in the backend changes; the engine passes this log as ``request_log=``.
"""

from __future__ import annotations

from typing import Callable, Sized

from ..backend import RequestLog


class CorrelatedRequestLog(RequestLog):
    """A request log that keeps data and records the host position of every seq."""

    def __init__(self, host_log: Sized | Callable[[], int]):
        super().__init__(enabled=True, keep_data=True)
        self._pos: Callable[[], int] = host_log if callable(host_log) else host_log.__len__  # type: ignore[union-attr]
        self.positions: list[int] = [0]   # positions[seq]; seq 0 = before anything

    def next_seq(self) -> int:
        seq = super().next_seq()
        self.positions.append(self._pos())
        return seq

    def position_of(self, seq: int | None) -> int | None:
        return None if seq is None else self.positions[seq]
