"""The host-level write log as the crash engine sees it.

semantics.md, "What a crash checker must prove": record every host-level
write, flush and discard *with its data*, in completion order (dm-log-writes
order: a write is logged when it completes, before the flush that covers it;
a FUA write is durable at its own completion).

:class:`HostOp` is the engine's normalised entry, whatever produced it: the
in-process :class:`RecordingNode` filter (used by the engine's own runs and
the unit tests, no file I/O) or the persistent ``logwrites`` file (read by
:func:`from_logwrites`).  :class:`HostLog` splits the list into *epochs*: the
runs of writes between two host flushes, the unit CrashMonkey enumerates
crash states over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..driver import BlockDriver, Buffer, Extent

SECTOR = 512


class OpKind(enum.IntEnum):
    WRITE = 1
    DISCARD = 2     # the range reads as zeros once applied (file punch-hole)
    FLUSH = 3
    MARK = 4        # a named point in the log; changes nothing


@dataclass(slots=True)
class HostOp:
    """One completed host-level operation.

    ``data`` is None for discards (zeros) and flushes.  ``fua``: the write
    was durable on its own completion (it must be in every later crash state).
    """
    kind: OpKind
    offset: int = 0
    length: int = 0
    data: bytes | None = None
    fua: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.length

    def payload(self) -> memoryview:
        """The bytes this op leaves on the medium (zeros for a discard)."""
        if self.data is not None:
            return memoryview(self.data)
        return memoryview(bytes(self.length))


@dataclass(slots=True)
class Epoch:
    """Host ops ``[start, stop)`` between two flushes (``flush`` = index of the
    closing flush, or None for the tail after the last flush)."""
    number: int
    start: int
    stop: int
    flush: int | None

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass
class HostLog:
    """The ordered list of host ops plus the epoch split."""
    ops: list[HostOp] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ops)

    def append(self, op: HostOp) -> None:
        self.ops.append(op)

    def epochs(self) -> list[Epoch]:
        """Epoch *k* holds the writes after flush *k-1* up to flush *k*.

        The last epoch is the tail (``flush`` None); it exists even when
        empty, so that "crash after the last flush" is always a state.
        """
        out: list[Epoch] = []
        start = 0
        for i, op in enumerate(self.ops):
            if op.kind is OpKind.FLUSH:
                out.append(Epoch(len(out), start, i, i))
                start = i + 1
        out.append(Epoch(len(out), start, len(self.ops), None))
        return out

    @classmethod
    def from_logwrites(cls, entries: Iterable) -> "HostLog":
        """Convert :mod:`blockbed.block.logwrites` entries (loaded with data).

        Positions are preserved one-to-one (entry *seq* = position *seq*),
        marks included, so the request-log correlation, which samples the log
        writer's ``seq``, lines up.  Discards and write-zeroes both become
        DISCARD (the range reads as zeros, as ``logwrites.replay`` does).
        """
        from .. import logwrites as lw
        log = cls()
        for e in entries:
            if e.kind is lw.Kind.WRITE:
                if e.data is None:
                    raise ValueError("write-log entries must be loaded with data")
                log.append(HostOp(OpKind.WRITE, e.offset, e.length, e.data, e.fua))
            elif e.kind in (lw.Kind.DISCARD, lw.Kind.WRITE_ZEROES):
                log.append(HostOp(OpKind.DISCARD, e.offset, e.length))
            elif e.kind is lw.Kind.FLUSH:
                log.append(HostOp(OpKind.FLUSH))
            else:
                log.append(HostOp(OpKind.MARK, data=(e.name or "").encode()))
        return log

    def counts(self) -> dict[str, int]:
        c = {k.name.lower(): 0 for k in OpKind}
        for op in self.ops:
            c[op.kind.name.lower()] += 1
        return c


class RecordingNode(BlockDriver):
    """A pass-through filter that appends every completed write, discard and
    flush to a :class:`HostLog` (dm-log-writes order, in memory).

    It sits directly above the protocol node, so the log sees exactly what
    would reach the host file.  ``write_zeroes`` is logged as a write of
    zeros (what the file ends up holding).  A failed operation is not logged
    (it did not happen).  ``supports_fua`` mirrors the child: a FUA write the
    child does natively is logged with ``fua=True``.
    """

    driver_name = "crash-recorder"

    def __init__(self, child: BlockDriver, log: HostLog | None = None):
        self.child = child
        self.log = log if log is not None else HostLog()
        self.supports_fua = child.supports_fua
        self.read_only = child.read_only

    def children(self) -> Iterable[BlockDriver]:
        return (self.child,)

    def read(self, offset: int, buf: memoryview) -> None:
        self.child.read(offset, buf)

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self.child.readv(offset, bufs)

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        self.child.write(offset, data, fua)
        self.log.append(HostOp(OpKind.WRITE, offset, len(data), bytes(data), fua and self.supports_fua))

    def writev(self, offset: int, bufs: Sequence[Buffer], fua: bool = False) -> None:
        self.child.writev(offset, bufs, fua)
        data = b"".join(bufs)
        self.log.append(HostOp(OpKind.WRITE, offset, len(data), data, fua and self.supports_fua))

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        self.child.write_zeroes(offset, length, may_unmap)
        self.log.append(HostOp(OpKind.DISCARD, offset, length))

    def discard(self, offset: int, length: int) -> None:
        self.child.discard(offset, length)
        self.log.append(HostOp(OpKind.DISCARD, offset, length))

    def flush(self) -> None:
        self.child.flush()
        self.log.append(HostOp(OpKind.FLUSH))

    def block_status(self, offset: int, length: int) -> list[Extent]:
        return self.child.block_status(offset, length)

    def length(self) -> int:
        return self.child.length()

    def truncate(self, length: int) -> None:
        self.child.truncate(length)

    def debug_event(self, name: str) -> None:
        self.child.debug_event(name)
