"""What every cluster of a qcow2 file holds, read straight from the file.

For teaching pictures (``blockbed img map --picture``): walk the header, the
active L1 table and its L2 tables, the refcount table and its blocks, the
snapshot table and each snapshot's L1 table (qcow2.txt "Header", "Cluster
mapping", "Refcount", "Snapshots"), and label the host clusters they point
to.  Clusters nothing points to are "unused" (leaked, or free space the
refcounts may still count).  Read-only; every offset is range-checked against
the file so a damaged image gives a partial map, never an exception.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from .header import ImageFormatError, parse_header
from .snapshot import read_snapshots

KINDS = ("header", "L1 table", "L2 table", "refcount table", "refcount block", "snapshot table",
         "snapshot L1", "data", "compressed data", "unused")
_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_COMPRESSED = 1 << 62


@dataclass
class Layout:
    cluster_size: int
    file_size: int
    kinds: dict[int, str] = field(default_factory=dict)    # host cluster index -> kind

    @property
    def clusters(self) -> int:
        return (self.file_size + self.cluster_size - 1) // self.cluster_size

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for i in range(self.clusters):
            out[self.kinds.get(i, "unused")] += 1
        return out


class _File:
    """The read(offset, view) a snapshot-table parser needs, on a plain fd."""

    def __init__(self, fd: int):
        self.fd = fd

    def read(self, offset: int, view: memoryview) -> None:
        data = os.pread(self.fd, len(view), offset)
        view[:len(data)] = data


def read_layout(path: str) -> Layout:
    """The layout of the qcow2 image at ``path`` (ImageFormatError if it is not qcow2)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        hdr = parse_header(os.pread(fd, 1 << 16, 0))
        cs = hdr.cluster_size
        lay = Layout(cs, size)

        def mark(off: int, nbytes: int, kind: str) -> bool:
            if off <= 0 and kind != "header" or off + nbytes > size + cs:
                return False
            for c in range(off // cs, (off + max(nbytes, 1) + cs - 1) // cs):
                lay.kinds.setdefault(c, kind)
            return True

        def table(off: int, entries: int, width: int = 8) -> list[int]:
            if off <= 0 or off + entries * width > size:
                return []
            raw = os.pread(fd, entries * width, off)
            return list(struct.unpack(f">{len(raw) // 8}Q", raw))[::width // 8]

        mark(0, cs, "header")
        l2_width = 16 if hdr.extended_l2 else 8
        l2_entries = cs // l2_width

        def walk_l1(l1_off: int, l1_size: int, kind: str, data: bool) -> None:
            if not mark(l1_off, l1_size * 8, kind):
                return
            for e in table(l1_off, l1_size):
                l2 = e & _OFFSET_MASK
                if not l2 or not mark(l2, cs, "L2 table") or not data:
                    continue
                for ent in table(l2, l2_entries, l2_width):
                    if ent & _COMPRESSED:
                        bits = 62 - (hdr.cluster_bits - 8)
                        host = ent & ((1 << bits) - 1)
                        mark(host, 1, "compressed data")
                    elif ent & _OFFSET_MASK:
                        mark(ent & _OFFSET_MASK, cs, "data")

        walk_l1(hdr.l1_table_offset, hdr.l1_size, "L1 table", data=True)
        rt_entries = hdr.refcount_table_clusters * cs // 8
        if mark(hdr.refcount_table_offset, hdr.refcount_table_clusters * cs, "refcount table"):
            for rb in table(hdr.refcount_table_offset, rt_entries):
                if rb & ~0x1FF:
                    mark(rb & ~0x1FF, cs, "refcount block")
        if hdr.nb_snapshots:
            try:
                snaps, nbytes = read_snapshots(_File(fd), hdr.snapshots_offset, hdr.nb_snapshots, cs, size)
            except ImageFormatError:
                snaps, nbytes = [], cs
            mark(hdr.snapshots_offset, nbytes, "snapshot table")
            for s in snaps:
                walk_l1(s.l1_table_offset, s.l1_size, "snapshot L1", data=True)
        return lay
    finally:
        os.close(fd)
