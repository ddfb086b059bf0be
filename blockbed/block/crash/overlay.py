"""Crash states as an in-memory overlay: one working buffer, no per-state copies.

The sweep visits states in log order.  :class:`WorkingImage` holds the host
image with every op before the current epoch applied (one buffer for the
whole sweep, advanced epoch by epoch).  A state adds a few pieces of the
current epoch's writes on top: :meth:`WorkingImage.overlay` writes them into
the buffer *in place*, remembering the bytes they cover, hands out a
read-only :class:`BufferNode` over the result, and puts the old bytes back
on exit.  Cost per state is proportional to the pieces it adds, not to the
image size, and reads through the node are plain slices (no per-read lookup
over the pieces, which is what makes a qcow2 open + check per state cheap).

Why not a node that looks pieces up on every read: a qcow2 check issues
hundreds of small reads per state; an apply/undo overlay makes each of them
a memcpy.  The price is that only one state is live at a time, which is how
the sweep works anyway.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from ..driver import BlockDriver, Buffer, Extent, ReadOnlyError
from .hostlog import HostLog, OpKind
from .states import Piece


class BufferNode(BlockDriver):
    """Read-only protocol node over a bytearray, without copying it.

    Reads past the end return zeros, as a short ``pread`` at EOF does for the
    file driver (a crash can leave metadata pointing past the file's end;
    the format driver's checks must see that, not an exception from us).
    """

    driver_name = "crash-state"
    supports_fua = True

    def __init__(self, buf: bytearray):
        self.buf = buf
        self.read_only = True

    @property
    def size(self) -> int:
        return len(self.buf)

    def read(self, offset: int, buf: memoryview) -> None:
        n = len(buf)
        if offset < 0:
            raise ValueError("negative offset")
        avail = max(0, min(n, self.size - offset))
        if avail:
            with memoryview(self.buf) as mv:
                buf[:avail] = mv[offset:offset + avail]
        if avail < n:
            buf[avail:] = bytes(n - avail)

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        raise ReadOnlyError("a crash state is read-only")

    def flush(self) -> None:
        pass

    def block_status(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, data=True, zero=False, host_offset=offset, host_node=self)]

    def length(self) -> int:
        return self.size


class WorkingImage:
    """The host image as of the start of the current epoch."""

    def __init__(self, base: bytes | bytearray, log: HostLog):
        self.buf = bytearray(base)
        self.log = log
        self.applied = 0          # ops [0, applied) are in buf

    def _put(self, offset: int, data: Buffer | None, length: int) -> None:
        end = offset + length
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        if data is None:
            self.buf[offset:end] = bytes(length)
        else:
            self.buf[offset:end] = data

    def advance(self, upto: int) -> None:
        """Apply ops ``[applied, upto)`` permanently."""
        if upto < self.applied:
            raise ValueError("the working image only moves forward; rebuild it to go back")
        for op in self.log.ops[self.applied:upto]:
            if op.kind is OpKind.WRITE:
                self._put(op.offset, op.data, op.length)
            elif op.kind is OpKind.DISCARD:
                self._put(op.offset, None, op.length)
        self.applied = upto

    @contextmanager
    def overlay(self, pieces: Sequence[Piece]) -> Iterator[BufferNode]:
        """The state "working image + pieces" as a read-only node, undone on exit."""
        undo: list[tuple[int, bytes]] = []
        old_len = len(self.buf)
        ops = self.log.ops
        try:
            for i, a, b in pieces:
                op = ops[i]
                off = op.offset + a
                n = b - a
                undo.append((off, bytes(self.buf[off:min(off + n, old_len)])))
                if op.kind is OpKind.WRITE:
                    with memoryview(op.data) as mv:  # type: ignore[arg-type]
                        self._put(off, mv[a:b], n)
                else:
                    self._put(off, None, n)
            yield BufferNode(self.buf)
        finally:
            for off, old in reversed(undo):
                self.buf[off:off + len(old)] = old
            if len(self.buf) != old_len:
                del self.buf[old_len:]

    def materialize(self, pieces: Sequence[Piece]) -> bytes:
        """A full copy of one state (for ``qemu-img check`` and replay export)."""
        with self.overlay(pieces) as node:
            return bytes(node.buf)
