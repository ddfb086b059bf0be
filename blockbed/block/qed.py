"""``qed`` format driver, read-only.

Layout (QEMU docs/interop/qed_spec.txt; behaviour as QEMU 7.2 block/qed.c): a
little-endian header (``QED\\0``, cluster size, table size in clusters, header
size in clusters, feature bits, L1 table offset, image size); a two-level
table like qcow2's, both levels ``table_size`` clusters of 64-bit byte
offsets.  An entry 0 is unallocated, an L2 entry 1 a zero cluster.

A backing file (feature bit 1) is named in the header clusters, relative to
the image's directory; it is probed unless the no-probe bit says raw, and
unallocated clusters read from it.  Refused: unknown feature bits (QEMU:
"Unsupported QED features").  A set need-check bit only matters to writers
(QEMU checks the image when it opens it read-write) and is ignored here.

Every field is checked in :meth:`QedDriver.__init__` (header) and
:meth:`QedDriver._l2` (a table's entries, when the table is loaded).
"""

from __future__ import annotations

import array
import os
import struct
import sys

from .driver import BlockDriver
from .foreign import _qed as _probe
from .readonlyfmt import (DATA, UNALLOCATED, ZERO, ReadOnlyFormat, Run, check_field,
                          check_range, chunks, merge_runs, node_path, open_backing,
                          read_exact, refuse_create)

FMT = "qed"
HEADER = struct.Struct("<4sIIIQQQQQII")
F_BACKING_FILE, F_NEED_CHECK, F_BACKING_FORMAT_NO_PROBE = 1, 2, 4
FEATURE_MASK = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE
MIN_CLUSTER, MAX_CLUSTER = 4096, 64 << 20
CLUSTER_ZERO = 1
L2_CACHE = 256


def probe(header: bytes, filename: str | None = None) -> int:
    return _probe(header, filename)


def _power_of_2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


class QedDriver(ReadOnlyFormat):
    driver_name = "qed"

    def __init__(self, file: BlockDriver, *, read_only: bool, opener=None):
        super().__init__(file, read_only)
        self.file_len = flen = file.length()
        check_field(FMT, flen >= HEADER.size, "file is too small, not a valid image")
        (magic, cluster, table_size, header_size, features, _compat, _autoclear, l1_offset,
         image_size, bf_off, bf_size) = HEADER.unpack(read_exact(file, 0, HEADER.size))
        check_field(FMT, magic == b"QED\0", "image not in QED format")
        check_field(FMT, not features & ~FEATURE_MASK,
                    f"unsupported QED features: {features & ~FEATURE_MASK:#x}")
        check_field(FMT, _power_of_2(cluster) and MIN_CLUSTER <= cluster <= MAX_CLUSTER,
                    f"invalid cluster size {cluster}")
        check_field(FMT, _power_of_2(table_size) and table_size <= 16,
                    f"invalid table size {table_size}")
        check_field(FMT, header_size >= 1 and header_size * cluster <= flen,
                    f"invalid header size {header_size}")
        self.cluster = cluster
        self.entries = table_size * cluster // 8
        max_size = self.entries * self.entries * cluster
        check_field(FMT, image_size % 512 == 0 and image_size <= max_size,
                    f"invalid image size {image_size} (at most {max_size} bytes for this "
                    "cluster and table size)")
        self.table_bytes = table_size * cluster
        self.header_bytes = header_size * cluster
        self._check_table("L1 table", l1_offset)
        self.size = image_size
        self.l1 = self._read_table(l1_offset)
        l1_used = -(-image_size // (self.entries * cluster))
        for i in range(l1_used):
            if self.l1[i]:
                self._check_table(f"L2 table {i}", self.l1[i])
        self._cache: dict[int, array.array] = {}
        if features & F_BACKING_FILE:
            self._open_backing(bf_off, bf_size, features, opener)

    def _open_backing(self, offset: int, size: int, features: int, opener) -> None:
        """The backing file name lies in the header clusters (QEMU: at most 4095 bytes);
        its format is raw with the no-probe bit, else probed, as QEMU does."""
        check_field(FMT, 0 < size < 4096 and offset + size <= self.header_bytes,
                    f"backing file name (offset {offset}, {size} bytes) is outside the header")
        name = read_exact(self.file, offset, size).decode("utf-8", "replace")
        where = node_path(self.file) or self.file.describe()
        check_field(FMT, os.path.isabs(name) or node_path(self.file) is not None,
                    f"cannot use a relative backing file name for '{where}'")
        path = name if os.path.isabs(name) else os.path.join(os.path.dirname(where), name)
        fmt = "raw" if features & F_BACKING_FORMAT_NO_PROBE else None
        self.backing = open_backing(opener, path, fmt, FMT, where)
        self.backing_filename, self.backing_format = name, fmt

    def _check_table(self, what: str, offset: int) -> None:
        check_field(FMT, offset % self.cluster == 0 and offset >= self.header_bytes,
                    f"{what} offset {offset} is invalid")
        check_range(FMT, what, offset, self.table_bytes, self.file_len)

    def _read_table(self, offset: int) -> array.array:
        t = array.array("Q", read_exact(self.file, offset, self.table_bytes))
        if sys.byteorder == "big":
            t.byteswap()
        return t

    def _l2(self, index: int) -> array.array | None:
        """L2 table ``index`` (None: unallocated); its cluster offsets checked on load."""
        t = self._cache.get(index)
        if t is not None or not self.l1[index]:
            return t
        t = self._read_table(self.l1[index])
        if any(t):                              # (an all-unallocated table needs no check)
            self._check_l2(index, t)
        if len(self._cache) >= L2_CACHE:
            self._cache.clear()
        self._cache[index] = t
        return t

    def _check_l2(self, index: int, t: array.array) -> None:
        span = self.entries * self.cluster
        for i, off in enumerate(t):
            start = index * span + i * self.cluster
            if off in (0, CLUSTER_ZERO) or start >= self.size:
                continue
            check_field(FMT, off % self.cluster == 0 and off >= self.header_bytes,
                        f"cluster {start // self.cluster} offset {off} is invalid")
            check_range(FMT, f"cluster {start // self.cluster}", off,
                        min(self.cluster, self.size - start), self.file_len)

    def info_fields(self) -> dict:
        """QEMU's bdrv_qed_get_info (the cluster size) and the backing file name from
        the header; its format is raw with the no-probe bit, else not reported."""
        out: dict = {"cluster-size": self.cluster}
        if self.backing is not None:
            out.update(self.backing_fields(self.backing_filename, self.backing_format))
        return out

    def _runs(self, offset: int, length: int) -> list[Run]:
        out = []
        for index, start, span in chunks(offset, length, self.entries * self.cluster):
            l2 = self._l2(index)
            if l2 is None:                      # a whole unallocated L2 table: one run
                out.append(Run(start, span, UNALLOCATED))
                continue
            for c, pos, n in chunks(start, span, self.cluster):
                e = l2[c % self.entries]
                if e == 0:
                    out.append(Run(pos, n, UNALLOCATED))
                elif e == CLUSTER_ZERO:
                    out.append(Run(pos, n, ZERO))
                else:
                    out.append(Run(pos, n, DATA, self.file, e + pos % self.cluster))
        return merge_runs(out)


def open(file_node: BlockDriver, *, read_only: bool, options: dict, opener=None) -> BlockDriver:
    check_field(FMT, not options, f"unknown option '{next(iter(options), '')}'")
    return QedDriver(file_node, read_only=read_only, opener=opener)   # backing opened last
create = refuse_create(FMT)
