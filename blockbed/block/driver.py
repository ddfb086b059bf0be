"""The one block-driver interface, shared by every node of the graph.

Modelled on QEMU's ``BlockDriver``: a format driver (qcow2, raw) sits on a
protocol driver (file, memory), filters (blkdebug, logwrites) sit anywhere in
between, and all of them answer the same calls.  Buffers are memoryviews so
that guest memory reaches the host system call without a copy.

Errors are :class:`BlockError` (an :class:`OSError`), so every failure carries
an errno.  The BlockBackend maps the errno to the device's error policy and
the device maps it to a guest-visible status (virtio IOERR, ATA UNC/IDNF,
SCSI MEDIUM ERROR …).
"""

from __future__ import annotations

import errno as _errno
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Sequence

Buffer = memoryview | bytes | bytearray


class BlockError(OSError):
    """A failed block operation.  ``err.errno`` says why (EIO, ENOSPC, EINVAL…)."""

    def __init__(self, err: int, message: str):
        super().__init__(err, message)

    def __str__(self) -> str:  # "message" rather than "[Errno 5] message"
        return str(self.strerror)


class ImageFormatError(BlockError):
    """The image is malformed or uses a feature we refuse (bad header, …)."""

    def __init__(self, message: str):
        super().__init__(_errno.EINVAL, message)


class CorruptImageError(BlockError):
    """Metadata is inconsistent; the image was marked corrupt and is read-only now."""

    def __init__(self, message: str):
        super().__init__(_errno.EIO, message)


class ReadOnlyError(BlockError):
    def __init__(self, message: str = "the node is read-only"):
        super().__init__(_errno.EROFS, message)


@dataclass(frozen=True, slots=True)
class Extent:
    """One run of ``block_status`` (QEMU's BDRV_BLOCK_* flags, by name).

    ``data``: reads return stored data.  ``zero``: reads return zeros.
    ``allocated``: this node (not its backing file) decides the content.
    ``host_offset``: where the data lives in ``host_node`` (OFFSET_VALID).
    ``depth``: how far down the backing chain the content comes from
    (0 = this node), as ``qemu-img map --output=json`` prints it.
    """

    offset: int
    length: int
    data: bool
    zero: bool
    allocated: bool = True
    host_offset: int | None = None
    depth: int = 0
    host_node: "BlockDriver | None" = None

    @property
    def end(self) -> int:
        return self.offset + self.length


def check_request(node: "BlockDriver", offset: int, length: int) -> None:
    """Reject negative or out-of-range requests with EINVAL (one place for all drivers)."""
    if offset < 0 or length < 0:
        raise BlockError(_errno.EINVAL, f"{node.driver_name}: negative offset or length "
                                        f"(offset={offset}, length={length})")
    size = node.length()
    if offset + length > size:
        raise BlockError(_errno.EINVAL, f"{node.driver_name}: request {offset}+{length} "
                                        f"is past the end of the node ({size} bytes)")


class BlockDriver(ABC):
    """A node of the block graph.

    Subclasses implement the abstract methods; vectored I/O (``readv``,
    ``writev``) defaults to a loop and protocol drivers override it with
    ``preadv``/``pwritev``.

    ``supports_fua``: a write with ``fua=True`` is durable on completion
    natively.  Where it is False the backend emulates FUA with write-then-flush
    (QEMU's ``BDRV_REQ_FUA`` fallback in block/io.c).
    """

    driver_name: str = "?"
    supports_fua: bool = False
    read_only: bool = False

    # --- data path -----------------------------------------------------
    @abstractmethod
    def read(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` (all of it, or raise)."""

    @abstractmethod
    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Write all of ``data`` at ``offset``; with ``fua`` durable on return."""

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        for b in bufs:
            self.read(offset, b)
            offset += len(b)

    def writev(self, offset: int, bufs: Sequence[Buffer], fua: bool = False) -> None:
        if len(bufs) == 1:
            self.write(offset, bufs[0], fua)
            return
        joined = b"".join(bufs)
        self.write(offset, memoryview(joined), fua)

    @abstractmethod
    def flush(self) -> None:
        """Make every completed write durable (fdatasync for files)."""

    def discard(self, offset: int, length: int) -> None:
        """Drop the range; reads afterwards may return old data or zeros.

        The default does nothing, which the interface allows (a discard is a
        hint, as ``BDRV_REQ_MAY_UNMAP`` is in QEMU).
        """
        check_request(self, offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        """Make the range read as zeros; ``may_unmap`` lets the node deallocate."""
        check_request(self, offset, length)
        chunk = memoryview(bytes(min(length, 1 << 20)))
        while length:
            n = min(length, len(chunk))
            self.write(offset, chunk[:n])
            offset += n
            length -= n

    def block_status(self, offset: int, length: int) -> list[Extent]:
        """Describe ``[offset, offset+length)`` as extents; default: all data."""
        check_request(self, offset, length)
        return [Extent(offset, length, data=True, zero=False)]

    # --- size and lifetime --------------------------------------------
    @abstractmethod
    def length(self) -> int:
        """The node's size in bytes."""

    def truncate(self, length: int) -> None:
        raise BlockError(_errno.ENOTSUP, f"{self.driver_name}: resizing is not supported")

    def close(self) -> None:
        for child in self.children():
            child.close()

    # --- graph ----------------------------------------------------------
    def children(self) -> Iterable["BlockDriver"]:
        """Nodes below this one (``file``, ``backing``, ``data-file`` …)."""
        return ()

    def debug_event(self, name: str) -> None:
        """A named event from the layer above (QEMU's BLKDBG_EVENT).

        Format drivers call ``self.file.debug_event("l2_update")`` before the
        matching metadata write; only blkdebug acts on it, every other node
        passes it down.  Adding an event is this one call at the right place.
        """
        for child in self.children():
            child.debug_event(name)

    def describe(self) -> str:
        """One line for messages and ``info``: ``qcow2(file(/path))``."""
        inner = ",".join(c.describe() for c in self.children())
        return f"{self.driver_name}({inner})" if inner else self.driver_name

    def __enter__(self) -> "BlockDriver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
