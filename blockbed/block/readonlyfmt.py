"""Shared machinery of the read-only foreign format drivers (vmdk, vpc, qed, vdi).

Each driver translates a guest range into *runs* (:class:`Run`): unallocated,
zero, data at a host offset of some node, data whose zero/data status comes
from the host node (QEMU's ``BDRV_BLOCK_RECURSE``: flat extents, fixed VHD),
or data the driver must produce itself (a compressed grain).  ``read`` and
``block_status`` are written once here on top of ``_runs``.

Every field a driver reads from an image passes through :func:`check_field`
or :func:`check_range` at the one place the driver parses it, so a hostile
header gives one clear line (naming the field) instead of a traceback, a huge
allocation, or a read of the wrong bytes.  The wording follows QEMU's where
QEMU has a message.
"""

from __future__ import annotations

import errno
import os
from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable, Sequence

from .driver import (BlockDriver, BlockError, Buffer, Extent, ImageFormatError,
                     ReadOnlyError, check_request)

UNALLOCATED, ZERO, DATA, RECURSE, SPECIAL = range(5)


@dataclass(frozen=True, slots=True)
class Run:
    """``length`` guest bytes at ``offset``: ``kind`` and where they live."""

    offset: int
    length: int
    kind: int
    node: BlockDriver | None = None
    host_offset: int = 0
    token: object = None          # SPECIAL: what _read_special needs (a grain …)


def check_field(fmt: str, ok: bool, message: str) -> None:
    """Refuse the image with ``fmt: message`` unless ``ok``."""
    if not ok:
        raise ImageFormatError(f"{fmt}: {message}")


def check_range(fmt: str, field: str, offset: int, size: int, file_len: int) -> None:
    """``[offset, offset+size)`` must lie inside the image file (``field`` names it)."""
    if offset < 0 or size < 0 or offset + size > file_len:
        raise ImageFormatError(f"{fmt}: {field} (offset {offset}, {size} bytes) is past the "
                               f"end of the file ({file_len} bytes); the image is truncated "
                               "or corrupt")


def read_exact(node: BlockDriver, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of ``node`` (callers checked the range)."""
    buf = bytearray(size)
    if size:
        node.read(offset, memoryview(buf))
    return bytes(buf)


def node_path(node: BlockDriver) -> str | None:
    """The host path below ``node`` (through filters such as blkdebug)."""
    for _ in range(16):
        path = getattr(node, "path", None)
        if isinstance(path, str):
            return path
        kids = list(node.children())
        if not kids:
            return None
        node = kids[0]
    return None


_opening: set[str] = set()           # backing files being opened now (loop guard)


def open_backing(opener, path: str, fmt: str | None, fmt_name: str, where: str) -> BlockDriver:
    """Open the backing file ``path`` read-only through the registry's ``opener``.

    A chain that leads back to a file being opened fails with QEMU's "Backing file
    ... creates an infinite loop" instead of recursing forever.
    """
    real = os.path.realpath(path)
    check_field(fmt_name, real not in _opening and real != os.path.realpath(where)
                and len(_opening) < 64,
                f"'{where}': backing file '{path}' creates an infinite loop")
    if opener is None:
        raise BlockError(errno.ENOTSUP, f"{fmt_name}: '{where}' has a backing file "
                                        f"'{path}'; it can only be opened through open_image")
    _opening.add(real)
    try:
        return opener(path, fmt, read_only=True)
    except BlockError as e:
        raise BlockError(e.errno or errno.EIO, f"{fmt_name}: could not open backing file "
                                               f"'{path}' of '{where}': {e}") from None
    finally:
        _opening.discard(real)


class ReadOnlyFormat(BlockDriver):
    """A format node that only reads: subclasses set ``size`` and implement ``_runs``.

    ``backing``: where unallocated runs come from (QEMU's backing file); without
    one they read as zeros.  ``block_status`` reports them unallocated, so
    ``img map`` descends into the backing node as qemu-img does.
    """

    read_only = True
    size = 0
    backing: BlockDriver | None = None

    def __init__(self, file: BlockDriver, read_only: bool):
        self.file = file
        if not read_only:
            raise BlockError(errno.EROFS, f"{self.driver_name}: blockbed opens this format "
                                          "read-only; open it read-only or convert it to "
                                          "qcow2 (blockbed img convert -O qcow2)")

    # --- hooks for the formats (abstract: the base class never reads by itself) ---------
    def _runs(self, offset: int, length: int) -> list[Run]:
        """Runs covering exactly ``[offset, offset+length)`` (checked request).  Every
        format implements it (qed, vdi, vhdx, vmdk, vpc)."""
        raise NotImplementedError(f"{type(self).__name__} must map guest ranges to runs")

    def _read_special(self, run: Run, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with guest bytes at ``offset`` inside ``run`` (kind SPECIAL).
        Only formats that return SPECIAL runs implement it (vmdk: compressed grains)."""
        raise NotImplementedError(f"{type(self).__name__} returned a SPECIAL run it cannot read")

    # --- qemu-img info --------------------------------------------------------
    def info_fields(self) -> dict:
        """The ImageInfo fields this format adds to the common ones, with QAPI's names
        (block/qapi.c bdrv_query_image_info): ``cluster-size`` (the driver's
        ``bdrv_get_info``, only when non-zero), ``format-specific``
        (``bdrv_get_specific_info``), the ``backing-filename`` trio.  The default: none."""
        return {}

    def host_files(self) -> list[BlockDriver]:
        """The host nodes whose allocated size is the image's disk size (QEMU's
        ``bdrv_get_allocated_file_size``: the file, plus VMDK's extent files)."""
        return [self.file]

    def backing_fields(self, name: str, fmt: str | None) -> dict:
        """``backing-filename`` as stored, ``full-backing-filename`` relative to the
        image's directory (QEMU's bdrv_get_full_backing_filename), and its format."""
        where = node_path(self.file) or ""
        full = name if os.path.isabs(name) else os.path.join(os.path.dirname(where), name)
        out = {"backing-filename": name, "full-backing-filename": full}
        if fmt:
            out["backing-filename-format"] = fmt
        return out

    # --- data path ----------------------------------------------------------
    def length(self) -> int:
        return self.size

    def read(self, offset: int, buf: memoryview) -> None:
        check_request(self, offset, len(buf))
        buf = memoryview(buf).cast("B")
        for r in self._runs(offset, len(buf)):
            piece = buf[r.offset - offset:r.offset - offset + r.length]
            if r.kind == UNALLOCATED and self.backing is not None:
                self._read_backing(r.offset, piece)
            elif r.kind in (UNALLOCATED, ZERO):
                piece[:] = bytes(r.length)
            elif r.kind == SPECIAL:
                self._read_special(r, r.offset, piece)
            else:
                r.node.read(r.host_offset, piece)

    def _read_backing(self, offset: int, piece: memoryview) -> None:
        """Backing data for ``piece``; zeros past the end of a shorter backing file."""
        inside = max(0, min(len(piece), self.backing.length() - offset))
        if inside:
            self.backing.read(offset, piece[:inside])
        piece[inside:] = bytes(len(piece) - inside)

    def block_status(self, offset: int, length: int) -> list[Extent]:
        check_request(self, offset, length)
        out: list[Extent] = []
        blen = self.backing.length() if self.backing is not None else 0
        for r in self._runs(offset, length):
            if r.kind == UNALLOCATED:
                inside = max(0, min(r.length, blen - r.offset))
                if inside:
                    out.append(Extent(r.offset, inside, data=False, zero=False,
                                      allocated=False))
                if inside < r.length:            # past the backing file (or none): zeros
                    out.append(Extent(r.offset + inside, r.length - inside, data=False,
                                      zero=self.backing is not None, allocated=False))
            elif r.kind == ZERO:
                out.append(Extent(r.offset, r.length, data=False, zero=True))
            elif r.kind == SPECIAL:
                out.append(Extent(r.offset, r.length, data=True, zero=False,
                                  host_node=r.node))
            elif r.kind == DATA:
                out.append(Extent(r.offset, r.length, data=True, zero=False,
                                  host_offset=r.host_offset, host_node=r.node))
            else:       # RECURSE: always data, zero where the host node reads zeros
                for e in r.node.block_status(r.host_offset, r.length):
                    out.append(Extent(e.offset - r.host_offset + r.offset, e.length, data=True,
                                      zero=e.zero, host_offset=e.offset, host_node=r.node))
        return out

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        raise ReadOnlyError(f"{self.driver_name}: the node is read-only")

    def writev(self, offset: int, bufs: Sequence[Buffer], fua: bool = False) -> None:
        raise ReadOnlyError(f"{self.driver_name}: the node is read-only")

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        raise ReadOnlyError(f"{self.driver_name}: the node is read-only")

    def discard(self, offset: int, length: int) -> None:
        raise ReadOnlyError(f"{self.driver_name}: the node is read-only")

    def flush(self) -> None:
        pass

    def children(self) -> Sequence[BlockDriver]:
        return (self.file,) if self.backing is None else (self.file, self.backing)


def chunks(offset: int, length: int, unit: int):
    """``(index, offset, n)`` for each piece of ``[offset, offset+length)`` in one ``unit``
    (grain, cluster, block): the table walk every format does."""
    end = offset + length
    while offset < end:
        index = offset // unit
        n = min(end, (index + 1) * unit) - offset
        yield index, offset, n
        offset += n


def block_map_runs(offset: int, length: int, block_size: int, allocated: list[int],
                   host_of: Callable[[int, int], int], node: BlockDriver, kind: int,
                   hole_kind: int) -> list[Run]:
    """Runs of a one-level block map (VHD BAT, VDI block map).  ``allocated``: the sorted
    indexes of allocated blocks, so a run of holes is one step however long it is;
    ``host_of(index, offset)``: where guest ``offset`` of allocated block ``index`` is."""
    out: list[Run] = []
    end = offset + length
    while offset < end:
        i = offset // block_size
        k = bisect_left(allocated, i)
        if k < len(allocated) and allocated[k] == i:
            n = min(end, (i + 1) * block_size) - offset
            out.append(Run(offset, n, kind, node, host_of(i, offset)))
        else:
            nxt = allocated[k] * block_size if k < len(allocated) else end
            n = min(end, nxt) - offset
            out.append(Run(offset, n, hole_kind))
        offset += n
    return merge_runs(out)


def merge_runs(runs: list[Run]) -> list[Run]:
    """Join neighbouring runs of one kind (and contiguous host offsets)."""
    out: list[Run] = []
    for r in runs:
        if out:
            p = out[-1]
            if p.kind == r.kind and p.node is r.node and p.kind in (UNALLOCATED, ZERO) or \
                    (p.kind == r.kind and p.kind in (DATA, RECURSE) and p.node is r.node and
                     p.host_offset + p.length == r.host_offset):
                out[-1] = Run(p.offset, p.length + r.length, p.kind, p.node, p.host_offset)
                continue
        out.append(r)
    return out


def refuse_create(fmt: str) -> Callable[[str, int, dict], None]:
    """The registry's ``create`` for a read-only format: a clear refusal."""
    def create(path: str, size: int, options: dict) -> None:
        raise BlockError(errno.ENOTSUP, f"image format '{fmt}' cannot be created by blockbed "
                                        f"(raw and qcow2 can); blockbed reads {fmt} images only")
    return create


def open_without_options(fmt: str, cls: type) -> Callable[..., BlockDriver]:
    """The registry's ``open`` for a driver class that takes no options."""
    def open_(file_node: BlockDriver, *, read_only: bool, options: dict,
              opener=None) -> BlockDriver:
        if options:
            raise BlockError(errno.EINVAL, f"{fmt}: unknown option '{next(iter(options))}'")
        return cls(file_node, read_only=read_only)
    return open_
