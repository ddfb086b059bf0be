"""``raw`` format driver: the guest sees the bytes of its child, optionally a window.

``offset``/``size`` select a window of the child (QEMU's raw ``offset=``,
``size=`` options), e.g. one partition of a disk image.  Without them the
node passes every call through and its length follows the child's.

Probing (QEMU block/raw-format.c): raw matches anything with the lowest
score.  When the format was *guessed* (``probed=True``), a write that would
change the first sector so that the image probes as another format is refused
with EPERM, so a guest can never turn a raw disk into, say, a qcow2 image that
would be opened with its backing file next time.
"""

from __future__ import annotations

import errno
from typing import Callable, Sequence

from .driver import BlockDriver, BlockError, Buffer, Extent, check_request

PROBE_SECTOR = 512


def probe(header: bytes, filename: str | None = None) -> int:
    """Score 1: raw is the fallback every other format outranks."""
    return 1


class RawDriver(BlockDriver):
    driver_name = "raw"

    def __init__(self, file: BlockDriver, *, offset: int = 0, size: int | None = None,
                 read_only: bool = False, probed: bool = False,
                 other_format_probe: Callable[[bytes], str | None] | None = None):
        self.file = file
        self.offset = offset
        self.size = size
        self.read_only = read_only or file.read_only
        self.supports_fua = file.supports_fua
        self.probed = probed
        self._other_format_probe = other_format_probe
        if offset < 0 or (size is not None and size < 0):
            raise BlockError(errno.EINVAL, "raw: offset and size must not be negative")
        if offset % 512 or (size is not None and size % 512):
            raise BlockError(errno.EINVAL, "raw: offset and size must be multiples of 512")
        flen = file.length()
        if offset > flen or (size is not None and offset + size > flen):
            raise BlockError(errno.EINVAL, f"raw: offset={offset} size={size} is past the end "
                                           f"of the file ({flen} bytes)")

    def children(self) -> Sequence[BlockDriver]:
        return (self.file,)

    def reopen_rw(self) -> None:
        """Make the node writable (see FileDriver.reopen_rw)."""
        reopen = getattr(self.file, "reopen_rw", None)
        if reopen is None:
            raise BlockError(errno.EACCES, f"{self.file.describe()}: cannot be reopened "
                                           "for writing")
        reopen()
        self.read_only = False

    def length(self) -> int:
        if self.size is not None:
            return self.size
        return self.file.length() - self.offset

    # --- data path ---------------------------------------------------------
    def read(self, offset: int, buf: memoryview) -> None:
        check_request(self, offset, len(buf))
        self.file.read(offset + self.offset, buf)

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        check_request(self, offset, sum(len(b) for b in bufs) if len(bufs) != 1 else len(bufs[0]))
        self.file.readv(offset + self.offset, bufs)

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        self.writev(offset, [data], fua)

    def writev(self, offset: int, bufs: Sequence[Buffer], fua: bool = False) -> None:
        n = sum(len(b) for b in bufs) if len(bufs) != 1 else len(bufs[0])
        check_request(self, offset, n)
        if self.read_only:
            raise BlockError(errno.EROFS, "raw: the node is read-only")
        if self.probed and offset < PROBE_SECTOR and n:
            self._check_probed_write(offset, bufs)
        self.file.writev(offset + self.offset, bufs, fua)

    def _check_probed_write(self, offset: int, bufs: Sequence[Buffer]) -> None:
        """QEMU's raw_check_write: the new sector 0 must still probe as raw."""
        if self._other_format_probe is None:
            return
        head = bytearray(min(PROBE_SECTOR, self.length()))
        self.file.read(self.offset, memoryview(head))
        pos = offset
        for b in bufs:
            if pos >= len(head):
                break
            take = min(len(b), len(head) - pos)
            head[pos:pos + take] = memoryview(b)[:take]
            pos += len(b)
        other = self._other_format_probe(bytes(head))
        if other:
            raise BlockError(errno.EPERM, "raw: refusing a write to sector 0 of a probed raw "
                                          f"image that would make it look like {other}; "
                                          "specify format=raw explicitly to allow it")

    def flush(self) -> None:
        self.file.flush()

    def discard(self, offset: int, length: int) -> None:
        check_request(self, offset, length)
        self.file.discard(offset + self.offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        check_request(self, offset, length)
        if self.read_only:
            raise BlockError(errno.EROFS, "raw: the node is read-only")
        if self.probed and offset < PROBE_SECTOR and length:
            self._check_probed_write(offset, [bytes(min(length, PROBE_SECTOR - offset))])
        self.file.write_zeroes(offset + self.offset, length, may_unmap)

    def block_status(self, offset: int, length: int) -> list[Extent]:
        check_request(self, offset, length)
        flen = self.file.length()
        out = []
        # The window may reach past the file's current end only if it shrank: report zeros.
        inner_len = max(0, min(length, flen - self.offset - offset))
        if inner_len:
            for e in self.file.block_status(offset + self.offset, inner_len):
                out.append(Extent(e.offset - self.offset, e.length, e.data, e.zero, e.allocated,
                                  e.host_offset, e.depth, e.host_node))
        if inner_len < length:
            out.append(Extent(offset + inner_len, length - inner_len, data=False, zero=True))
        return out

    # --- size and lifetime -------------------------------------------------
    def truncate(self, length: int) -> None:
        if self.size is not None or self.offset:
            raise BlockError(errno.ENOTSUP, "raw: cannot resize a node with offset/size set")
        if self.read_only:
            raise BlockError(errno.EROFS, "raw: the node is read-only")
        self.file.truncate(length)

    def close(self) -> None:
        self.file.close()
