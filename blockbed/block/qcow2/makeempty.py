"""Emptying a qcow2 image after ``img commit`` (QEMU qcow2_make_empty).

Once an overlay's data has been committed into its backing file, qemu-img drops
the overlay's clusters so the guest reads everything through the backing file
again.  QEMU does it one of two ways, and so do we:

*Completely empty* (v3, no snapshots, no persistent bitmaps, no LUKS header, no
external data file, and the first refcount block can count the new metadata):
the file is rebuilt in place as a freshly created one — header in cluster 0 (its
extensions and backing file name untouched), the refcount table in cluster 1 with
one refcount block in cluster 2, the (zeroed) L1 table from cluster 3 — and
truncated after the L1 table.  The order of the writes is QEMU's: the L1 table is
zeroed first, so a crash in between leaves an image that is empty with leaked
clusters (``check -r leaks`` cleans it), never one that maps stale data.

*Discard everything* (every other image): each cluster's L2 entry is cleared, not
set to the zero flag, so the backing file shows through; clusters that snapshots
still reference stay allocated.
"""

from __future__ import annotations

import os

from .header import parse_header, serialize_header
from .refcount import RefcountCodec


def can_completely_empty(drv) -> bool:
    """QEMU's condition for rebuilding instead of discarding."""
    h = drv.header
    cs = drv.cluster_size
    l1_clusters = -(-(h.l1_size * 8) // cs)
    return (h.version >= 3 and not drv.snapshots and not h.bitmaps and h.crypto is None
            and not drv.has_data_file and h.crypt_method == 0
            and 3 + l1_clusters <= RefcountCodec(h.refcount_order, cs).entries)


def discard_all(drv) -> None:
    """Unallocate every cluster of the open image (full discard: entries become 0)."""
    cs = drv.cluster_size
    end = -(-drv.header.size // cs) * cs
    if end:
        from .shrink import clear_entries
        clear_entries(drv, 0, end)
    drv.flush()


def completely_empty_file(path: str) -> None:
    """Rebuild the closed image at ``path`` as an empty one (see the module docstring)."""
    fd = os.open(path, os.O_RDWR)
    try:
        length = os.fstat(fd).st_size
        raw = os.pread(fd, min(length, 2 << 20), 0)
        h = parse_header(raw)
        cs = h.cluster_size
        l1_clusters = -(-(h.l1_size * 8) // cs)
        # 1. the L1 table: nothing is mapped any more
        if h.l1_table_offset and l1_clusters:
            os.pwrite(fd, bytes(l1_clusters * cs), h.l1_table_offset)
            os.fdatasync(fd)
        # 2. refcount table (cluster 1) and its only block (cluster 2), zeroed, then linked
        os.pwrite(fd, bytes(2 * cs), cs)
        os.pwrite(fd, (2 * cs).to_bytes(8, "big"), cs)
        os.fdatasync(fd)
        # 3. the header names the new layout
        h.refcount_table_offset = cs
        h.refcount_table_clusters = 1
        h.l1_table_offset = 3 * cs
        hdr = serialize_header(h)
        os.pwrite(fd, hdr + bytes(cs - len(hdr)), 0)
        # 4. the L1 table at its new place, the file cut after it
        os.pwrite(fd, bytes(l1_clusters * cs), 3 * cs)
        os.ftruncate(fd, (3 + l1_clusters) * cs)
        # 5. refcounts for header, refcount table, refcount block and L1 table
        codec = RefcountCodec(h.refcount_order, cs)
        os.pwrite(fd, codec.filled_block(3 + l1_clusters), 2 * cs)
        os.fdatasync(fd)
    finally:
        os.close(fd)
