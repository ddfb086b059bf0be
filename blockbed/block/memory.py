"""``memory`` protocol driver: a growable bytearray.

Used by tests and by the crash engine, where images must be built, opened and
thrown away without touching the disk.  Writes are durable on completion (there
is no cache to lose), so ``supports_fua`` is True and ``flush`` only counts.
"""

from __future__ import annotations

from .driver import BlockDriver, Buffer, Extent, ReadOnlyError, check_request


class MemoryDriver(BlockDriver):
    driver_name = "memory"
    supports_fua = True

    def __init__(self, data: bytes | bytearray | int = 0, read_only: bool = False):
        self.buf = bytearray(data) if not isinstance(data, int) else bytearray(data)
        self.read_only = read_only
        self.flushes = 0

    def read(self, offset: int, buf: memoryview) -> None:
        check_request(self, offset, len(buf))
        buf[:] = memoryview(self.buf)[offset:offset + len(buf)]

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        if self.read_only:
            raise ReadOnlyError()
        n = len(data)
        if offset < 0:
            check_request(self, offset, n)
        end = offset + n
        if end > len(self.buf):  # protocol nodes grow on write past EOF, as files do
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[offset:end] = data

    def flush(self) -> None:
        self.flushes += 1

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        if self.read_only:
            raise ReadOnlyError()
        end = offset + length
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[offset:end] = bytes(length)

    def discard(self, offset: int, length: int) -> None:
        check_request(self, offset, length)
        self.buf[offset:offset + length] = bytes(length)

    def block_status(self, offset: int, length: int) -> list[Extent]:
        check_request(self, offset, length)
        return [Extent(offset, length, data=True, zero=False, host_offset=offset, host_node=self)]

    def length(self) -> int:
        return len(self.buf)

    def truncate(self, length: int) -> None:
        if self.read_only:
            raise ReadOnlyError()
        if length < len(self.buf):
            del self.buf[length:]
        else:
            self.buf.extend(bytes(length - len(self.buf)))
