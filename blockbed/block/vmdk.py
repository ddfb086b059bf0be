"""``vmdk`` format driver, read-only: hosted sparse extents, streamOptimized, descriptors.

Layouts (VMware "Virtual Disk Format 1.1"; behaviour as QEMU 7.2 block/vmdk.c):

* a **hosted sparse extent** starts with the little-endian ``KDMV`` header
  (SparseExtentHeader): capacity and grain size in sectors, the grain
  directory (GD, QEMU's L1) and grain tables (GT, L2) of ``numGTEsPerGT``
  32-bit sector numbers.  A GT entry 0 is an unallocated grain, 1 a zero grain
  (when the header's zero-grain flag is set), anything else the grain's sector.
  The redundant GD is ignored (QEMU reads it only to update it on writes).
  ``monolithicSparse`` is one such file with the descriptor embedded.
* **streamOptimized**: the same header with compression = 1 (deflate) and
  markers; each grain is ``lba (u64), size (u32), zlib data``.  A gdOffset of
  ``GD_AT_END`` means the real header is the footer 1536 bytes from the end.
* an ESX ``COWD`` extent (vmfsSparse, QEMU's VMDK3) has the same two-level
  table with 4096-entry grain tables and no zero grains or compression.
* a **text descriptor** lists extents: ``RW|RDONLY SECTORS TYPE "FILE" [OFFSET]``
  with TYPE FLAT/VMFS (raw bytes at OFFSET sectors), SPARSE/VMFSSPARSE (a
  hosted sparse or COWD file) or ZERO; FILE is relative to the descriptor's directory
  (monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, vmfs).

A **delta link** (``parentCID`` other than ``ffffffff``, in a descriptor file
or the descriptor embedded in a sparse extent) names its parent in
``parentFileNameHint``; the parent is opened as the backing node (format vmdk,
as QEMU does) and its ``CID`` must equal ``parentCID``.

Differences from QEMU: QEMU skips RDONLY and ZERO extent lines (their sectors
vanish from the disk); blockbed reads them as VMware does.  A parent whose CID
does not match fails at open (QEMU fails the first read that needs it).  ESX
seSparse extents are refused with a clear message.

Every header field is validated in :func:`_parse_sparse_header` and every
table entry where its table is loaded (:meth:`SparseExtent._gt`).
"""

from __future__ import annotations

import array
import errno
import os
import re
import struct
import sys
import zlib
from dataclasses import dataclass

from .driver import BlockDriver, BlockError, ImageFormatError
from .foreign import _vmdk as _probe
from .readonlyfmt import (DATA, RECURSE, SPECIAL, UNALLOCATED, ZERO, ReadOnlyFormat, Run,
                          check_field, check_range, chunks, merge_runs, node_path, open_backing,
                          read_exact, refuse_create)

FMT = "vmdk"
SECTOR = 512
VMDK4_MAGIC = b"KDMV"
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")       # SparseExtentHeader, 79 bytes
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN = 1 << 0, 1 << 1, 1 << 2
FLAG_COMPRESSED, FLAG_MARKER = 1 << 16, 1 << 17
MARKER_EOS, MARKER_FOOTER = 0, 3
MAX_GRAIN_SECTORS = 0x200000                        # 1 GiB grains: QEMU's limit
MAX_GD_ENTRIES = 32 * 1024 * 1024                  # QEMU's "L1 size too big"
MAX_DESCRIPTOR = (1 << 20) - 1                      # QEMU reads at most this much
MAX_EXTENTS = 1024
GT_CACHE = 512


def probe(header: bytes, filename: str | None = None) -> int:
    return _probe(header, filename)


@dataclass(frozen=True)
class SparseHeader:
    version: int
    flags: int
    capacity: int            # sectors
    grain_sectors: int
    desc_offset: int         # sectors
    desc_size: int
    gtes_per_gt: int
    gd_offset: int           # sectors
    grain_offset: int
    compressed: bool


def _parse_sparse_header(raw: bytes, file_len: int, where: str) -> SparseHeader:
    """Decode and validate a SparseExtentHeader (the one place its fields are checked)."""
    check_field(FMT, len(raw) >= HEADER.size, f"'{where}': file is too small, not a valid "
                                               "image")
    (magic, version, flags, capacity, grain, desc_off, desc_size, gtes, _rgd, gd_off,
     grain_off, _filler, nl, compress) = HEADER.unpack_from(raw)
    check_field(FMT, magic == VMDK4_MAGIC, f"'{where}': image not in VMDK format")
    check_field(FMT, 1 <= version <= 3, f"'{where}': unsupported VMDK version {version}")
    if flags & FLAG_NL_DETECT:
        check_field(FMT, nl == b"\n \r\n", f"'{where}': the newline check bytes are damaged "
                                           "(was the file transferred in text mode?)")
    check_field(FMT, compress in (0, 1), f"'{where}': unsupported compression algorithm "
                                         f"{compress}")
    check_field(FMT, gtes <= 512, f"'{where}': L2 table size too big")
    check_field(FMT, gtes * grain != 0, f"'{where}': L1 entry size is invalid")
    check_field(FMT, grain <= MAX_GRAIN_SECTORS, f"'{where}': invalid granularity, image may "
                                                 "be corrupt")
    check_field(FMT, capacity < (1 << 63) // SECTOR, f"'{where}': capacity {capacity} is too "
                                                     "large")
    check_field(FMT, grain_off * SECTOR <= file_len,
                f"'{where}': file truncated, expecting at least {grain_off * SECTOR} bytes")
    return SparseHeader(version, flags, capacity, grain, desc_off, desc_size, gtes, gd_off,
                        grain_off, compress == 1)


COWD_HEADER = struct.Struct("<4sIIIIII")          # VMDK3 (ESX vmfsSparse) header start
COWD_GTES = 4096                                   # a COWD grain table's fixed size


def _parse_cowd_header(raw: bytes, file_len: int, where: str) -> SparseHeader:
    """Decode and validate an ESX ``COWD`` (vmfsSparse) header, as QEMU's
    vmdk_open_vmfs_sparse reads it: 4096-entry grain tables, no zero grains."""
    check_field(FMT, len(raw) >= COWD_HEADER.size, f"'{where}': file is too small, not a "
                                                   "valid image")
    _magic, version, flags, sectors, grain, gd_off, gd_size = COWD_HEADER.unpack_from(raw)
    check_field(FMT, grain != 0, f"'{where}': L1 entry size is invalid")
    check_field(FMT, grain <= MAX_GRAIN_SECTORS, f"'{where}': invalid granularity, image may "
                                                 "be corrupt")
    check_field(FMT, gd_size * COWD_GTES * grain >= sectors,
                f"'{where}': the grain directory ({gd_size} entries) does not cover the "
                f"{sectors} sectors of the disk")
    return SparseHeader(version, flags, sectors, grain, 0, 0, COWD_GTES, gd_off, 0, False)


class SparseExtent:
    """One hosted sparse extent file: GD loaded at open, GTs loaded (and checked) on use."""

    def __init__(self, node: BlockDriver, where: str, head: bytes | None = None):
        self.node = node
        self.where = where
        self.file_len = node.length()
        if head is None:
            head = read_exact(node, 0, min(SECTOR, self.file_len))
        self.cowd = head[:4] == b"COWD"
        h = (_parse_cowd_header if self.cowd else _parse_sparse_header)(head, self.file_len,
                                                                         where)
        if h.gd_offset == GD_AT_END and not self.cowd:
            h = self._footer_header(h)
        self.h = h
        self.sectors = h.capacity
        self.grain_bytes = h.grain_sectors * SECTOR
        self.gt_span = h.gtes_per_gt * h.grain_sectors          # sectors per GD entry
        gd_entries = -(-h.capacity // self.gt_span)
        check_field(FMT, gd_entries <= MAX_GD_ENTRIES, f"'{where}': L1 size too big")
        check_range(FMT, f"'{where}': grain directory", h.gd_offset * SECTOR, gd_entries * 4,
                    self.file_len)
        self.gd = array.array("I", read_exact(node, h.gd_offset * SECTOR, gd_entries * 4))
        if sys.byteorder == "big":
            self.gd.byteswap()
        gt_bytes = h.gtes_per_gt * 4
        over = self.gd and max(self.gd) * SECTOR + gt_bytes > self.file_len
        for i, sector in enumerate(self.gd if over else ()):   # every GT inside the file
            if sector and sector * SECTOR + gt_bytes > self.file_len:
                check_range(FMT, f"'{where}': grain table {i}", sector * SECTOR, gt_bytes,
                            self.file_len)
        self.zero_grain = bool(h.flags & FLAG_ZERO_GRAIN) and not self.cowd
        self.marker = bool(h.flags & FLAG_MARKER)
        self._cache: dict[int, array.array | None] = {}

    def _footer_header(self, h: SparseHeader) -> SparseHeader:
        """streamOptimized: the header with the real GD offset is the footer at EOF-1536."""
        check_range(FMT, f"'{self.where}': footer", self.file_len - 1536, 1536, self.file_len)
        raw = read_exact(self.node, self.file_len - 1536, 1536)
        fm_size, fm_type = struct.unpack_from("<II", raw, 8)
        eos_val, eos_size, eos_type = struct.unpack_from("<QII", raw, 1024)
        check_field(FMT, fm_size == 0 and fm_type == MARKER_FOOTER and eos_val == 0 and
                    eos_size == 0 and eos_type == MARKER_EOS and raw[512:516] == VMDK4_MAGIC,
                    f"'{self.where}': invalid footer")
        f = _parse_sparse_header(raw[512:1024], self.file_len, self.where)
        check_field(FMT, f.gd_offset != GD_AT_END, f"'{self.where}': invalid footer")
        return f

    def _gt(self, index: int) -> array.array | None:
        """Grain table ``index`` (None: not allocated), its entries checked against the file."""
        if index in self._cache:
            return self._cache[index]
        sector = self.gd[index]
        if sector == 0:
            return None
        size = self.h.gtes_per_gt * 4                   # in the file: checked at open
        gt = array.array("I", read_exact(self.node, sector * SECTOR, size))
        if sys.byteorder == "big":
            gt.byteswap()
        if not any(gt):
            gt = None                                   # all unallocated: one run in runs()
        elif (max(gt) + 1) * SECTOR + self.grain_bytes > self.file_len:
            self._check_gt(index, gt)                   # (the fast path: all entries fit)
        if len(self._cache) >= GT_CACHE:
            self._cache.clear()
        self._cache[index] = gt
        return gt

    def _check_gt(self, index: int, gt: array.array) -> None:
        """Every grain of table ``index`` the capacity covers lies inside the file."""
        base = index * self.gt_span
        for i, e in enumerate(gt):
            if e == 0 or (e == 1 and self.zero_grain):
                continue
            start = (base + i * self.h.grain_sectors) * SECTOR
            if start >= self.sectors * SECTOR:
                continue                                # past the capacity: never read
            need = 12 if self.h.compressed else min(self.grain_bytes,
                                                    self.sectors * SECTOR - start)
            check_range(FMT, f"'{self.where}': grain {base // self.h.grain_sectors + i} "
                             f"(grain table {index} entry {i})", e * SECTOR, need,
                        self.file_len)

    def runs(self, base: int, offset: int, length: int) -> list[Run]:
        """Runs for extent bytes ``[offset, offset+length)``, guest offsets shifted by ``base``."""
        out = []
        gb = self.grain_bytes
        for index, start, span in chunks(offset, length, self.gt_span * SECTOR):
            gt = self._gt(index)
            if gt is None:                      # a whole unallocated grain table: one run
                out.append(Run(base + start, span, UNALLOCATED))
                continue
            for grain, pos, n in chunks(start, span, gb):
                e = gt[grain % self.h.gtes_per_gt]
                if e == 0:
                    out.append(Run(base + pos, n, UNALLOCATED))
                elif e == 1 and self.zero_grain:
                    out.append(Run(base + pos, n, ZERO))
                elif self.h.compressed:
                    out.append(Run(base + pos, n, SPECIAL, self.node,
                                   token=(self, e, base + grain * gb)))
                else:
                    out.append(Run(base + pos, n, DATA, self.node, e * SECTOR + pos % gb))
        return out

    def read_compressed(self, grain_sector: int, offset_in_grain: int, buf: memoryview) -> None:
        """Inflate the grain at ``grain_sector`` (marker + zlib) and copy the asked part."""
        pos = grain_sector * SECTOR
        what = f"'{self.where}': compressed grain at offset {pos}"
        if self.marker:
            _lba, size = struct.unpack("<QI", read_exact(self.node, pos, 12))
            pos += 12
        else:
            size = self.grain_bytes
        check_field(FMT, 0 < size <= 2 * self.grain_bytes, f"{what}: invalid size {size}")
        size = min(size, self.file_len - pos)
        d = zlib.decompressobj()
        try:
            data = d.decompress(read_exact(self.node, pos, size), self.grain_bytes)
        except zlib.error as e:
            raise BlockError(errno.EIO, f"{FMT}: {what} is corrupt ({e})") from None
        if offset_in_grain + len(buf) > len(data):
            raise BlockError(errno.EIO, f"{FMT}: {what} inflates to {len(data)} bytes, "
                                        f"fewer than the grain needs")
        buf[:] = data[offset_in_grain:offset_in_grain + len(buf)]


class FlatExtent:
    """Raw bytes of ``node`` from ``start`` (FLAT/VMFS extents)."""

    def __init__(self, node: BlockDriver, sectors: int, start: int, where: str):
        self.node, self.sectors, self.start, self.where = node, sectors, start, where
        check_range(FMT, f"flat extent '{where}'", start, sectors * SECTOR, node.length())

    def runs(self, base: int, offset: int, length: int) -> list[Run]:
        return [Run(base + offset, length, RECURSE, self.node, self.start + offset)]


class ZeroExtent:
    def __init__(self, sectors: int):
        self.sectors = sectors
        self.node = None

    def runs(self, base: int, offset: int, length: int) -> list[Run]:
        return [Run(base + offset, length, ZERO)]


def descriptor_fields(text: str, where: str) -> tuple[dict[str, str], list[tuple]]:
    """``key=value`` fields and extent lines (access, sectors, type, file, offset)."""
    fields: dict[str, str] = {}
    extents = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.split(None, 1)[0] in ("RW", "RDONLY", "NOACCESS"):
            extents.append(_parse_extent_line(line, where))
            continue
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields, extents


def parse_descriptor(text: str, where: str) -> tuple[dict[str, str], list[tuple]]:
    """The fields and extents of a descriptor file, its createType and extent count checked."""
    fields, extents = descriptor_fields(text, where)
    create_type = fields.get("createType")
    check_field(FMT, create_type is not None, f"'{where}': invalid VMDK image descriptor "
                                              "(no createType)")
    check_field(FMT, create_type in ("monolithicFlat", "vmfs", "vmfsSparse",
                                     "twoGbMaxExtentSparse",
                                     "twoGbMaxExtentFlat", "monolithicSparse",
                                     "streamOptimized"),
                f"'{where}': unsupported image type '{create_type}'")
    check_field(FMT, 0 < len(extents) <= MAX_EXTENTS,
                f"'{where}': the descriptor lists {len(extents)} extents (1 to {MAX_EXTENTS} "
                "allowed)")
    return fields, extents


_LEADING_HEX = re.compile(r"\s*(?:0[xX])?([0-9a-fA-F]+)")


def _cid(value: str, where: str) -> int:
    """A CID as QEMU's vmdk_read_cid reads it: sscanf("%x") -- the leading hex digits,
    whatever follows them (a descriptor whose newline was lost still has its CID)."""
    m = _LEADING_HEX.match(value)
    if m is None:
        raise ImageFormatError(f"{FMT}: '{where}': invalid CID '{value}'")
    return int(m.group(1), 16) & 0xFFFFFFFF


def _parse_extent_line(line: str, where: str) -> tuple[str, int, str, str, int]:
    bad = f"'{where}': invalid extent line: {line}"
    head, q1, rest = line.partition('"')
    name, q2, tail = rest.partition('"')
    parts = head.split()
    check_field(FMT, bool(q1 and q2 and name) and len(parts) == 3, bad)
    access, sectors_s, kind = parts
    check_field(FMT, sectors_s.isdigit() and int(sectors_s) > 0, bad)
    offset = 0
    tail = tail.strip()
    if kind == "FLAT":
        check_field(FMT, tail.isdigit(), bad)
        offset = int(tail)
    else:
        check_field(FMT, tail == "", bad)
    check_field(FMT, kind in ("FLAT", "VMFS", "SPARSE", "VMFSSPARSE", "ZERO"),
                f"'{where}': unsupported extent type '{kind}'")
    check_field(FMT, access != "NOACCESS", f"'{where}': extent '{name}' is NOACCESS")
    return access, int(sectors_s), kind, name, offset


class VmdkDriver(ReadOnlyFormat):
    driver_name = "vmdk"

    def __init__(self, file: BlockDriver, *, read_only: bool, opener=None):
        super().__init__(file, read_only)
        self.extent_nodes: list[BlockDriver] = []
        self.extent_kinds: list[str] = [""]       # the descriptor's type of each extent
        self._opener = opener
        try:
            self._open()
        except BaseException:
            for n in self.extent_nodes:
                n.close()
            if self.backing is not None:
                self.backing.close()
            raise
        self.size = sum(e.sectors for e in self.extents) * SECTOR
        self.starts = []
        pos = 0
        for e in self.extents:
            self.starts.append(pos)
            pos += e.sectors * SECTOR

    def _open(self) -> None:
        where = node_path(self.file) or self.file.describe()
        flen = self.file.length()
        check_field(FMT, flen >= 4, f"'{where}': file is too small, not a valid image")
        head = read_exact(self.file, 0, min(SECTOR, flen))
        if head[:4] == VMDK4_MAGIC:
            ext = SparseExtent(self.file, where, head)
            if ext.h.capacity == 0 and ext.h.desc_offset:
                # QEMU: a zero-capacity sparse header may only carry a descriptor
                self._open_descriptor(self._read_text(ext.h.desc_offset * SECTOR, flen), where)
                return
            self.create_type = "streamOptimized" if ext.h.compressed else "monolithicSparse"
            self.extents = [ext]
            fields: dict[str, str] = {}
            if ext.h.desc_offset and ext.h.desc_size:       # the embedded descriptor
                check_range(FMT, f"'{where}': embedded descriptor", ext.h.desc_offset * SECTOR,
                            min(ext.h.desc_size * SECTOR, MAX_DESCRIPTOR), flen)
                fields, _ = descriptor_fields(self._read_text(
                    ext.h.desc_offset * SECTOR, flen, ext.h.desc_size * SECTOR), where)
            self._open_parent(fields, where)
            return
        if head[:4] == b"COWD":
            self.create_type = "vmfsSparse"
            self.extents = [SparseExtent(self.file, where, head)]
            self.cid = None
            return
        self._open_descriptor(self._read_text(0, flen), where)

    def _read_text(self, offset: int, flen: int, size: int = MAX_DESCRIPTOR) -> str:
        size = max(0, min(MAX_DESCRIPTOR, size, flen - offset))
        raw = read_exact(self.file, offset, size)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _open_parent(self, fields: dict[str, str], where: str) -> None:
        """A delta link (parentCID other than ffffffff): open parentFileNameHint as the
        backing node; its CID must be our parentCID (QEMU's vmdk_is_cid_valid)."""
        self.cid = fields.get("CID")
        parent = fields.get("parentCID", "ffffffff")
        self.parent_cid = _cid(parent, where)
        if self.parent_cid == 0xFFFFFFFF:
            return
        hint = fields.get("parentFileNameHint")
        check_field(FMT, bool(hint), f"'{where}': parentCID={parent} but no "
                                     "parentFileNameHint")
        path = self._host_path(hint, where)
        self.backing = open_backing(self._opener, path, "vmdk", FMT, where)
        self.parent_hint = hint
        theirs = getattr(self.backing, "cid", None)
        check_field(FMT, theirs is not None and _cid(theirs, path) == _cid(parent, where),
                    f"'{where}': parent '{hint}' has CID {theirs}, the image expects "
                    f"parentCID={parent} (the parent was changed after the delta link "
                    "was made)")

    def _host_path(self, name: str, where: str) -> str:
        """``name`` from a descriptor, relative to the descriptor's directory."""
        check_field(FMT, not name.startswith(("nbd:", "nbd+", "blkdebug:", "json:")),
                    f"'{where}': file '{name}' names a protocol; only files are allowed")
        check_field(FMT, os.path.isabs(name) or node_path(self.file) is not None,
                    f"cannot use relative paths with VMDK descriptor file '{where}' (it has "
                    "no directory on this host)")
        return name if os.path.isabs(name) else os.path.join(os.path.dirname(where), name)

    def _open_descriptor(self, text: str, where: str) -> None:
        fields, lines = parse_descriptor(text, where)
        self.create_type = fields["createType"]
        self.extents = []
        self.extent_kinds = [kind for _a, _s, kind, _n, _o in lines]
        for access, sectors, kind, name, offset in lines:
            if kind == "ZERO":
                self.extents.append(ZeroExtent(sectors))
                continue
            node = self._open_extent_file(name, where)
            path = node_path(node) or name
            if kind in ("FLAT", "VMFS"):
                self.extents.append(FlatExtent(node, sectors, offset * SECTOR, path))
                continue
            ext = SparseExtent(node, path)      # QEMU sizes it by its header's capacity
            check_field(FMT, ext.h.capacity != 0, f"'{path}': sparse extent has no capacity")
            self.extents.append(ext)
        self._open_parent(fields, where)

    def _open_extent_file(self, name: str, where: str) -> BlockDriver:
        path = self._host_path(name, where)
        check_field(FMT, os.path.realpath(path) != os.path.realpath(where),
                    f"'{where}': the descriptor names itself as an extent")
        try:
            if self._opener is not None:
                node = self._opener(path, "raw", read_only=True)
            else:
                from .file import FileDriver
                node = FileDriver(path, read_only=True)
        except BlockError as e:
            raise BlockError(e.errno or errno.EIO,
                             f"{FMT}: could not open extent '{path}': {e}") from None
        self.extent_nodes.append(node)
        return node

    def info_fields(self) -> dict:
        """QEMU's vmdk_get_info (cluster size of the first extent unless it is flat;
        none when the extents differ in kind, compression or grain) and
        vmdk_get_specific_info: CID, parent CID, createType, one entry per extent
        (vmdk_get_extent_info: its file, type as the descriptor spells it, "" for a
        monolithic image's own extent, size, grain size unless flat, ``compressed``
        only when set).  The backing format of a delta link is always vmdk."""
        first = self.extents[0]
        kinds = {(isinstance(e, SparseExtent), getattr(e, "h", None) and e.h.compressed,
                  getattr(e, "grain_bytes", 0)) for e in self.extents}
        out: dict = {}
        if isinstance(first, SparseExtent) and len(kinds) == 1:
            out["cluster-size"] = first.grain_bytes
        extents = []
        for e, kind in zip(self.extents, self.extent_kinds):
            one: dict = {"filename": e.where if e.node is not None else "",
                         "format": kind, "virtual-size": e.sectors * SECTOR}
            if isinstance(e, SparseExtent):
                one["cluster-size"] = e.grain_bytes
                if e.h.compressed:
                    one["compressed"] = True
            extents.append(one)
        where = node_path(self.file) or self.file.describe()
        cid = _cid(self.cid, where) & 0xFFFFFFFF if self.cid is not None else 0
        out["format-specific"] = {"type": "vmdk", "data": {
            "cid": cid, "parent-cid": getattr(self, "parent_cid", 0xFFFFFFFF),
            "create-type": self.create_type, "extents": extents}}
        if self.backing is not None:
            out.update(self.backing_fields(self.parent_hint, "vmdk"))
        return out

    def host_files(self) -> list[BlockDriver]:
        return [self.file, *self.extent_nodes]

    def children(self):
        return (self.file, *self.extent_nodes, *(() if self.backing is None else
                                                 (self.backing,)))

    def _runs(self, offset: int, length: int) -> list[Run]:
        out: list[Run] = []
        end = offset + length
        for start, ext in zip(self.starts, self.extents):
            stop = start + ext.sectors * SECTOR
            if stop <= offset or start >= end:
                continue
            lo, hi = max(offset, start), min(end, stop)
            out.extend(ext.runs(start, lo - start, hi - lo))
        return merge_runs(out)

    def _read_special(self, run: Run, offset: int, buf: memoryview) -> None:
        ext, sector, grain_start = run.token       # a SPECIAL run is (part of) one grain
        ext.read_compressed(sector, offset - grain_start, buf)

def open(file_node: BlockDriver, *, read_only: bool, options: dict, opener=None) -> BlockDriver:
    if options:
        raise BlockError(errno.EINVAL, f"vmdk: unknown option '{next(iter(options))}'")
    return VmdkDriver(file_node, read_only=read_only, opener=opener)


create = refuse_create(FMT)
