"""One NBD export: a BlockBackend plus what the protocol says about it.

Transmission flags as qemu-nbd 7.2 sets them (nbd/server.c
nbd_export_create): HAS_FLAGS, SEND_FLUSH, SEND_FUA and SEND_CACHE always;
READ_ONLY for ``-r``, otherwise SEND_TRIM, SEND_WRITE_ZEROES and
SEND_FAST_ZERO; CAN_MULTI_CONN when more than one client may connect
(``--shared`` other than 1) — safe because every connection goes through the
same backend under one lock, so a flush on one connection covers writes
completed on all of them (spec "Transmission flags", NBD_FLAG_CAN_MULTI_CONN).

Block status is the status down to the bottom of the backing chain (QEMU
``bdrv_block_status_above(bs, NULL)``): a range no layer allocates reads as
zeros.  ``base:allocation`` reports HOLE for "not data" and ZERO for "reads
as zeros" (spec "base:allocation metadata context").
"""

from __future__ import annotations

import errno
import threading

from ..block.backend import BlockBackend
from ..block.driver import BlockDriver, BlockError
from . import protocol as P

# qemu's NBD_MAX_BLOCK_STATUS_EXTENTS: 1 MiB of extent descriptors
MAX_STATUS_EXTENTS = (1 << 20) // 8


class Export:
    """An export of ``blk``; every block operation holds ``lock``."""

    def __init__(self, blk: BlockBackend, *, name: str = "", description: str = "",
                 read_only: bool = False, shared: int = 1, bitmaps: list[str] | None = None,
                 allocation_depth: bool = False):
        self.blk = blk
        self.name = name
        self.description = description
        self.read_only = read_only or blk.read_only
        self.size = blk.length()
        self.lock = threading.Lock()
        flags = P.FLAG_HAS_FLAGS | P.FLAG_SEND_FLUSH | P.FLAG_SEND_FUA | P.FLAG_SEND_CACHE
        if shared != 1:
            flags |= P.FLAG_CAN_MULTI_CONN
        if self.read_only:
            flags |= P.FLAG_READ_ONLY
        else:
            flags |= P.FLAG_SEND_TRIM | P.FLAG_SEND_WRITE_ZEROES | P.FLAG_SEND_FAST_ZERO
        self.flags = flags
        # the format node's request alignment, which is 1 for raw and qcow2 even over
        # O_DIRECT (the file node pads unaligned requests; qemu-nbd 7.2 says 1 too)
        self.request_alignment = 1
        self.max_transfer = P.MAX_BUFFER
        self.allocation_depth = allocation_depth     # qemu-nbd -A: qemu:allocation-depth
        self.bitmap_names: list[str] = []
        self._bitmaps = []
        for bm in bitmaps or []:
            self._bitmaps.append(_find_bitmap(blk.root, bm))
            self.bitmap_names.append(bm)

    # --- status -----------------------------------------------------------------------------
    def status(self, offset: int, length: int) -> list[tuple[int, bool, bool]]:
        """``(length, data, zero)`` runs covering ``[offset, offset+length)``,
        unmerged, in order (what one block-status call per run gives QEMU)."""
        with self.lock:
            return _chain_status(self.blk.root, offset, length)

    def allocation_extents(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        """``base:allocation`` extents ``(length, flags)``, equal neighbours merged,
        at most ``limit`` of them (fewer bytes are then described)."""
        out: list[list[int]] = []
        for n, data, zero in self.status(offset, length):
            flags = (0 if data else P.STATE_HOLE) | (P.STATE_ZERO if zero else 0)
            if not _add_extent(out, n, flags, limit):
                break
        return [(a, b) for a, b in out]

    def depth_extents(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        """``qemu:allocation-depth`` extents: 0 where no layer of the chain allocates
        the range, else 1 for the top image, 2 for its backing file, …"""
        out: list[list[int]] = []
        with self.lock:
            runs = _chain_depth(self.blk.root, offset, length, 1)
        for n, depth in runs:
            if not _add_extent(out, n, depth, limit):
                break
        return [(a, b) for a, b in out]

    def bitmap_extents(self, index: int, offset: int, length: int,
                       limit: int) -> list[tuple[int, int]]:
        """``qemu:dirty-bitmap:NAME`` extents: DIRTY (1) or clean (0) runs."""
        end = offset + length
        out: list[list[int]] = []
        pos = offset
        with self.lock:
            bits = self._bitmaps[index]
            runs = [(s, s + n) for s, n in bits.extents() if s < end and s + n > offset]
        for s, e in runs:
            s, e = max(s, offset), min(e, end)
            if not _add_extent(out, s - pos, 0, limit) or \
                    not _add_extent(out, e - s, P.STATE_DIRTY, limit):
                return [(a, b) for a, b in out]
            pos = e
        _add_extent(out, end - pos, 0, limit)
        return [(a, b) for a, b in out]


def _add_extent(out: list[list[int]], n: int, flags: int, limit: int) -> bool:
    """Append or merge (qemu nbd_extent_array_add); False when ``limit`` is reached."""
    if not n:
        return True
    if out and out[-1][1] == flags and out[-1][0] + n <= 0xFFFFFFFF:
        out[-1][0] += n
        return True
    if len(out) >= limit:
        return False
    out.append([n, flags])
    return True


def _chain_status(node: BlockDriver, offset: int, length: int) -> list[tuple[int, bool, bool]]:
    out: list[tuple[int, bool, bool]] = []
    end = offset + length
    for e in node.block_status(offset, length):
        s, t = max(e.offset, offset), min(e.end, end)
        if t <= s:
            continue
        if e.allocated or e.data or e.zero:
            out.append((t - s, e.data, e.zero))
            continue
        backing = getattr(node, "backing", None)
        if backing is None:
            out.append((t - s, False, True))
            continue
        blen = backing.length()
        if s < blen:
            out.extend(_chain_status(backing, s, min(t, blen) - s))
        if t > blen:                         # past a shorter backing file: zeros
            out.append((t - max(s, blen), False, True))
    return out


def _chain_depth(node: BlockDriver, offset: int, length: int,
                 depth: int) -> list[tuple[int, int]]:
    """(length, depth) runs: the chain layer that allocates each range (QEMU
    bdrv_is_allocated_above with the chain's bottom as base, as qemu-nbd -A)."""
    out: list[tuple[int, int]] = []
    end = offset + length
    for e in node.block_status(offset, length):
        s, t = max(e.offset, offset), min(e.end, end)
        if t <= s:
            continue
        if e.allocated:
            out.append((t - s, depth))
            continue
        backing = getattr(node, "backing", None)
        blen = backing.length() if backing is not None else 0
        if s < blen:
            out.extend(_chain_depth(backing, s, min(t, blen) - s, depth + 1))
        if t > blen:
            out.append((t - max(s, blen), 0))
    return out


def _find_bitmap(node: BlockDriver, name: str):
    """The dirty bits of persistent bitmap ``name`` of ``node`` or its backing chain
    (qemu-nbd -B; its message when absent)."""
    from ..block.qcow2.bitmaps import BitmapStore
    n: BlockDriver | None = node
    while n is not None:
        store = getattr(n, "bitmaps", None)
        if isinstance(store, BitmapStore) and store.get(name) is not None:
            return store.bits(store.lookup(name))
        n = getattr(n, "backing", None)
    raise BlockError(errno.ENOENT, f"Bitmap '{name}' is not found")
