"""Persistent dirty bitmaps (spec "Bitmaps extension", "Bitmap directory",
"Bitmap table"), kept as QEMU 7.2 keeps them (block/qcow2-bitmap.c).

Life cycle:

* Open (any mode): the directory is read and checked; every entry becomes a
  :class:`Bitmap`.  An entry already flagged IN_USE was left by a writer that
  did not close the image: it is *inconsistent* — listed, removable, never
  used (QEMU: "Bitmap 'x' is inconsistent and cannot be used").
* Open read-write: the data of every consistent bitmap is loaded, then the
  entries are flagged IN_USE in place, so a crash from now on leaves them
  flagged.  The autoclear bit is dropped while the directory is rewritten in
  place and set again afterwards (a torn directory write is then ignored).
* While open: enabled bitmaps (flag AUTO) mark every guest-visible change
  (:meth:`BitmapStore.record`, called by the driver for write, write_zeroes
  and discard); a resize resizes them.
* Clean close (:meth:`BitmapStore.store`): new data clusters (a table entry
  of 0 for an all-clean chunk, 1 for an all-dirty one, a cluster otherwise),
  new tables, a new directory; refcounts and data made durable; only then the
  header points at the new directory (IN_USE clear); then the old clusters
  are freed.  A crash at any point leaves either the old directory (flagged
  IN_USE) or the new one, plus at worst leaked clusters.
"""

from __future__ import annotations

import errno
import itertools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from ... import trace
from ..driver import BlockError, ImageFormatError
from .dirtybitmap import DirtyBitmap
from .header import AUTOCLEAR_BITMAPS, BitmapDirEntry

if TYPE_CHECKING:
    from .driver import Qcow2Driver


def _log():
    import logging      # on first warning only (start-up time of every img command)
    return logging.getLogger("blockbed.qcow2")


# --- spec constants ("Bitmap directory", "Bitmap table") and QEMU's limits
BME_FLAG_IN_USE = 1 << 0
BME_FLAG_AUTO = 1 << 1
BME_FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
BME_RESERVED_FLAGS = ~(BME_FLAG_IN_USE | BME_FLAG_AUTO | BME_FLAG_EXTRA_DATA_COMPATIBLE) & 0xFFFFFFFF
BT_DIRTY_TRACKING_BITMAP = 1
BME_MIN_GRANULARITY_BITS = 9
BME_MAX_GRANULARITY_BITS = 31
BME_MAX_NAME_SIZE = 1023
BME_MAX_TABLE_SIZE = 0x8000000
BME_MAX_PHYS_SIZE = 0x20000000
QCOW2_MAX_BITMAPS = 65535
QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS
BME_TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
BME_TABLE_ENTRY_ALL_ONES = 1
DIR_ENTRY_SIZE = BitmapDirEntry.sizeof()     # 24

_NODE_IDS = itertools.count(100)

INCONSISTENT_HINT = "Try block-dirty-bitmap-remove to delete this bitmap from disk"


def auto_node_name() -> str:
    """A name like the ones QEMU gives nodes nobody named (quoted in its errors)."""
    return f"#block{next(_NODE_IDS)}"


class BitmapError(BlockError):
    """A refused bitmap operation, with QEMU's message (and optional hint line)."""

    def __init__(self, msg: str, hint: str | None = None, err: int = errno.EINVAL):
        super().__init__(err, msg)
        self.hint = hint


@dataclass
class DirEntry:
    """One bitmap directory entry as it is on disk (spec "Bitmap directory")."""

    name: str
    granularity_bits: int
    flags: int
    table_offset: int = 0
    table_size: int = 0
    type: int = BT_DIRTY_TRACKING_BITMAP

    @property
    def in_use(self) -> bool:
        return bool(self.flags & BME_FLAG_IN_USE)

    def flag_names(self) -> list[str]:
        """The flags qemu-img info reports, in its order."""
        return [n for bit, n in ((BME_FLAG_IN_USE, "in-use"), (BME_FLAG_AUTO, "auto"))
                if self.flags & bit]


@dataclass
class Bitmap:
    """A persistent bitmap while the image is open (QEMU's BdrvDirtyBitmap)."""

    name: str
    granularity: int
    enabled: bool
    inconsistent: bool = False
    readonly: bool = False
    bits: DirtyBitmap | None = None      # None until loaded (never for inconsistent ones)

    def check_usable(self, modify: bool = True) -> None:
        """QEMU bdrv_dirty_bitmap_check: inconsistent bitmaps cannot be used at all,
        read-only ones cannot be modified."""
        if self.inconsistent:
            raise BitmapError(f"Bitmap '{self.name}' is inconsistent and cannot be used",
                              INCONSISTENT_HINT)
        if modify and self.readonly:
            raise BitmapError(f"Bitmap '{self.name}' is readonly and cannot be modified")


def dir_entry_size(name_size: int) -> int:
    return (DIR_ENTRY_SIZE + name_size + 7) & ~7


def table_size_for(size: int, granularity_bits: int, cluster_size: int) -> int:
    """Bitmap table entries needed to cover ``size`` bytes of disk."""
    nbytes = ((-(-size >> granularity_bits)) + 7) >> 3
    return -(-nbytes // cluster_size)


def parse_directory(raw: bytes, nb_bitmaps: int) -> list[DirEntry]:
    """Decode ``nb_bitmaps`` entries; structural errors are ImageFormatError."""
    out: list[DirEntry] = []
    pos = 0
    for _ in range(nb_bitmaps):
        if pos + DIR_ENTRY_SIZE > len(raw):
            raise ImageFormatError("Bitmap directory is truncated (it ends inside an entry)")
        e = BitmapDirEntry.parse(raw[pos:pos + DIR_ENTRY_SIZE])
        name_at = pos + DIR_ENTRY_SIZE + e.extra_data_size
        if name_at + e.name_size > len(raw):
            raise ImageFormatError("Bitmap directory is truncated (it ends inside a name)")
        name = bytes(raw[name_at:name_at + e.name_size]).decode("utf-8", "replace")
        if e.extra_data_size:
            raise ImageFormatError("Bitmap extra data is not supported")
        out.append(DirEntry(name, e.granularity_bits, e.flags, e.bitmap_table_offset,
                            e.bitmap_table_size, e.type))
        pos = (name_at + e.name_size + 7) & ~7
    return out


def serialize_directory(entries: list[DirEntry]) -> bytes:
    out = bytearray()
    for e in entries:
        name = e.name.encode()
        out += BitmapDirEntry.build(dict(
            bitmap_table_offset=e.table_offset, bitmap_table_size=e.table_size,
            flags=e.flags, type=e.type, granularity_bits=e.granularity_bits,
            name_size=len(name), extra_data_size=0))
        out += name
        out += bytes(-len(out) % 8)
    return bytes(out)


class BitmapStore:
    """The persistent bitmaps of one open qcow2 image."""

    def __init__(self, drv: "Qcow2Driver"):
        self.drv = drv
        self.cluster_size = drv.cluster_size
        self.entries: list[DirEntry] = []     # the directory as it is on disk
        self.live: list[Bitmap] = []          # in memory, in creation order
        self._tracking: list[DirtyBitmap] = []
        self._writable = False
        # QEMU names nodes nobody named "#blockNNN"; its error messages quote that name
        self.node_name = auto_node_name()
        h = drv.header
        if h.bitmaps and h.autoclear_features & AUTOCLEAR_BITMAPS:
            self.entries = self._read_directory()
            for e in self.entries:
                self.live.append(Bitmap(e.name, 1 << e.granularity_bits,
                                        enabled=bool(e.flags & BME_FLAG_AUTO),
                                        inconsistent=e.in_use, readonly=True))

    # --- the directory ------------------------------------------------------------------
    def _read_directory(self) -> list[DirEntry]:
        """Read and check the directory (QEMU bitmap_list_load + check_dir_entry)."""
        ext = self.drv.header.bitmaps
        nb, off, size = (ext["nb_bitmaps"], ext["bitmap_directory_offset"],
                         ext["bitmap_directory_size"])
        cs = self.cluster_size
        if ext["reserved32"]:
            raise ImageFormatError("bitmaps_ext: Reserved field is not zero")
        if nb == 0:
            raise ImageFormatError("found bitmaps extension with zero bitmaps")
        if nb > QCOW2_MAX_BITMAPS:
            raise ImageFormatError(f"bitmaps_ext: Image has {nb} bitmaps, exceeding the QEMU "
                                   f"supported maximum of {QCOW2_MAX_BITMAPS}")
        if size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
            raise ImageFormatError(f"bitmaps_ext: bitmap directory size ({size}) exceeds the "
                                   f"maximum supported size ({QCOW2_MAX_BITMAP_DIRECTORY_SIZE})")
        if not size or off % cs or off + size > self.drv.file.length():
            raise ImageFormatError("qcow2: invalid bitmap directory")
        raw = bytearray(size)
        self.drv.file.read(off, memoryview(raw))
        entries = parse_directory(bytes(raw), nb)
        disk = self.drv.header.size
        for e in entries:
            phys = e.table_size * cs
            bad = (e.type != BT_DIRTY_TRACKING_BITMAP
                   or not BME_MIN_GRANULARITY_BITS <= e.granularity_bits <= BME_MAX_GRANULARITY_BITS
                   or e.flags & BME_RESERVED_FLAGS
                   or e.table_size > BME_MAX_TABLE_SIZE or phys > BME_MAX_PHYS_SIZE
                   or e.table_offset % cs or (e.table_size and not e.table_offset)
                   or e.table_offset + e.table_size * 8 > self.drv.file.length()
                   or (not e.in_use and disk > (phys * 8) << e.granularity_bits))
            if bad:
                raise ImageFormatError(f"Bitmap '{e.name}' doesn't satisfy the constraints")
        return entries

    def _load_bits(self, e: DirEntry) -> DirtyBitmap:
        """The bitmap's data from its table (QEMU load_bitmap_data)."""
        cs = self.cluster_size
        bits = DirtyBitmap(self.drv.header.size, 1 << e.granularity_bits)
        if not e.table_size:
            return bits
        raw = bytearray(e.table_size * 8)
        self.drv.file.read(e.table_offset, memoryview(raw))
        table = struct.unpack(f">{e.table_size}Q", raw)
        self._check_not_metadata(e, e.table_offset, "table", "bitmap_table")
        buf = bytearray(cs)
        flen = self.drv.file.length()
        for i, t in enumerate(table):
            if i * cs >= len(bits.data):
                break
            if t & BME_TABLE_ENTRY_RESERVED_MASK:
                raise ImageFormatError(f"Bitmap '{e.name}': bitmap table entry {i} has "
                                       "reserved bits set")
            off = t & BME_TABLE_ENTRY_OFFSET_MASK
            # QEMU check_table_entry: data clusters are cluster aligned, and an
            # all-ones entry has no cluster; blockbed also refuses a cluster past the
            # end of the file or on other metadata (storing the bitmap frees it)
            if off % cs or (off and t & BME_TABLE_ENTRY_ALL_ONES) or off >= flen:
                raise ImageFormatError(f"Bitmap '{e.name}': bitmap table entry {i} is "
                                       "invalid")
            if off:
                self._check_not_metadata(e, off, f"data cluster (table entry {i})",
                                         "bitmap_data")
                self.drv.overlap.add(off, cs, "bitmap_data")
                self.drv.file.read(off, memoryview(buf))
                bits.load_chunk(i, cs, bytes(buf))
            elif t & BME_TABLE_ENTRY_ALL_ONES:
                bits.load_chunk(i, cs, None)
        return bits

    def _check_not_metadata(self, e: DirEntry, off: int, what: str, own: str) -> None:
        kind = self.drv.overlap.kind_at(off)
        if kind is not None and kind != own:
            raise ImageFormatError(f"Bitmap '{e.name}': its {what} at {off:#x} overlaps "
                                   f"with metadata ({kind})")

    def _entry(self, name: str) -> DirEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    # --- queries ----------------------------------------------------------------------------
    def __bool__(self) -> bool:
        return bool(self.entries or self.live)

    def __len__(self) -> int:
        return len(self.live)

    def __iter__(self) -> Iterator[Bitmap]:
        return iter(self.live)

    def get(self, name: str) -> Bitmap | None:
        return next((b for b in self.live if b.name == name), None)

    def lookup(self, name: str) -> Bitmap:
        """The bitmap ``name`` or QEMU's block_dirty_bitmap_lookup error."""
        b = self.get(name)
        if b is None:
            raise BitmapError(f"Dirty bitmap '{name}' not found", err=errno.ENOENT)
        return b

    def bits(self, b: Bitmap) -> DirtyBitmap:
        """The dirty bits of a consistent bitmap (loaded on first use when read-only)."""
        b.check_usable(modify=False)
        if b.bits is None:
            e = self._entry(b.name)
            b.bits = self._load_bits(e) if e is not None else \
                DirtyBitmap(self.drv.header.size, b.granularity)
        return b.bits

    def info(self) -> list[dict]:
        """What qemu-img info lists: the on-disk directory (name, granularity, flags)."""
        return [{"flags": e.flag_names(), "name": e.name, "granularity": 1 << e.granularity_bits}
                for e in self.entries]

    # --- read-write open, tracking ---------------------------------------------------------
    def open_rw(self) -> None:
        """Load the consistent bitmaps and flag them IN_USE on disk (QEMU
        qcow2_load_dirty_bitmaps + update_ext_header_and_dir_in_place)."""
        drv, h = self.drv, self.drv.header
        self._writable = True
        if h.bitmaps and not h.autoclear_features & AUTOCLEAR_BITMAPS:
            # a program without bitmap support wrote the image: the extension is stale
            _log().warning("qcow2: a program lacking bitmap support modified this file, so all "
                        "bitmaps are now considered inconsistent; some clusters may be leaked, "
                        "run 'qemu-img check -r' on the image file to fix")
            h.bitmaps = None
            drv.rewrite_header()
            return
        needs_update = False
        for b in self.live:
            b.readonly = False
            if b.inconsistent:
                continue
            self.bits(b)
            e = self._entry(b.name)
            e.flags |= BME_FLAG_IN_USE
            needs_update = True
        self._retrack()
        if not needs_update:
            return
        raw = serialize_directory(self.entries)     # same layout: no extra data
        off = h.bitmaps["bitmap_directory_offset"]
        h.autoclear_features &= ~AUTOCLEAR_BITMAPS
        drv._write_features()
        drv.overlap.check(off, len(raw), "bitmap_directory")
        drv.file.write(off, raw)
        drv.file.flush()
        h.autoclear_features |= AUTOCLEAR_BITMAPS
        drv._write_features()
        if trace.enabled:
            trace.emit("qcow2.bitmaps_in_use", bitmaps=[b.name for b in self.live])

    def _retrack(self) -> None:
        self._tracking = [b.bits for b in self.live
                          if b.enabled and not b.inconsistent and b.bits is not None
                          and not b.readonly]

    def record(self, offset: int, length: int) -> None:
        """A guest-visible change of ``[offset, offset+length)``: mark enabled bitmaps."""
        for bits in self._tracking:
            bits.set_range(offset, length)

    def check_resize(self) -> None:
        """QEMU qcow2_truncate_bitmaps_check: every bitmap must be usable."""
        for b in self.live:
            b.check_usable()

    def resize(self, size: int) -> None:
        for b in self.live:
            if b.bits is not None:
                b.bits.resize(size)

    # --- operations (qemu-img bitmap / QMP block-dirty-bitmap-*) -------------------------------
    def _require_writable(self) -> None:
        if not self._writable:
            raise BitmapError("No write access", err=errno.EACCES)

    def add(self, name: str, granularity: int) -> Bitmap:
        """A new enabled persistent bitmap (QEMU qmp_block_dirty_bitmap_add with
        persistent=on; it reaches the disk at close)."""
        self._require_writable()
        drv = self.drv
        node = self.node_name
        if drv.header.version < 3:
            raise BitmapError(f"Can't make bitmap '{name}' persistent in '{node}': "
                              "Cannot store dirty bitmaps in qcow2 v2 files")
        gbits = granularity.bit_length() - 1
        why = None
        nbytes = ((-(-drv.header.size >> gbits)) + 7) >> 3
        if gbits > BME_MAX_GRANULARITY_BITS:
            why = f"Granularity exceeds maximum ({1 << BME_MAX_GRANULARITY_BITS} bytes)"
        elif gbits < BME_MIN_GRANULARITY_BITS:
            why = f"Granularity is under minimum ({1 << BME_MIN_GRANULARITY_BITS} bytes)"
        elif nbytes > BME_MAX_PHYS_SIZE or nbytes > BME_MAX_TABLE_SIZE * self.cluster_size:
            why = "Too much space will be occupied by the bitmap. Use larger granularity"
        elif len(name.encode()) > BME_MAX_NAME_SIZE:
            why = f"Name length exceeds maximum ({BME_MAX_NAME_SIZE} characters)"
        elif len(self.entries) >= QCOW2_MAX_BITMAPS:
            why = "Maximum number of persistent bitmaps is already reached"
        elif self.entries and (len(serialize_directory(self.entries))
                               + dir_entry_size(len(name.encode()))
                               > QCOW2_MAX_BITMAP_DIRECTORY_SIZE):
            why = "Not enough space in the bitmap directory"
        if why:
            raise BitmapError(f"Can't make bitmap '{name}' persistent in '{node}': {why}")
        if self.get(name) is not None:
            raise BitmapError(f"Bitmap already exists: {name}")
        b = Bitmap(name, granularity, enabled=True,
                   bits=DirtyBitmap(drv.header.size, granularity))
        self.live.append(b)
        self._retrack()
        return b

    def remove(self, name: str) -> None:
        """Drop a bitmap from memory and, if it is on disk, from the image at once
        (QEMU qcow2_co_remove_persistent_dirty_bitmap)."""
        self._require_writable()
        b = self.lookup(name)
        self.live.remove(b)
        self._retrack()
        e = self._entry(name)
        if e is None:
            return
        self.entries.remove(e)
        self._write_directory(drop=[e])

    def clear(self, name: str) -> None:
        b = self.lookup(name)
        b.check_usable()
        self.bits(b).clear()

    def set_enabled(self, name: str, enabled: bool) -> None:
        b = self.lookup(name)
        if b.inconsistent:
            b.check_usable()
        b.enabled = enabled
        self._retrack()

    def merge(self, dst_name: str, src: "BitmapStore", src_name: str) -> None:
        """OR ``src``'s bitmap into ``dst_name`` (QEMU block_dirty_bitmap_merge; the
        source may be another image's, its size must match)."""
        dst = self.lookup(dst_name)
        s = src.lookup(src_name)
        s.check_usable(modify=False)
        sbits = src.bits(s)
        if sbits.size != self.drv.header.size:
            raise BitmapError(f"Bitmaps are of different sizes (destination size is "
                              f"{self.drv.header.size}, source size is {sbits.size}) and "
                              "can't be merged")
        dst.check_usable()
        self.bits(dst).merge(sbits)

    # --- storing -----------------------------------------------------------------------------
    def store(self) -> None:
        """Write every consistent bitmap back and clear IN_USE (QEMU
        qcow2_store_persistent_dirty_bitmaps).  Called on clean close."""
        if not self._writable or all(b.inconsistent for b in self.live):
            return              # QEMU: no changed persistent bitmaps, nothing to do
        drop: list[DirEntry] = []
        # QEMU walks its bitmap list newest first: new entries are appended in that order
        for b in reversed(self.live):
            if b.inconsistent:
                continue
            e = self._entry(b.name)
            if e is None:
                e = DirEntry(b.name, b.granularity.bit_length() - 1, 0)
                self.entries.append(e)
            elif e.table_size:
                drop.append(DirEntry(e.name, e.granularity_bits, e.flags, e.table_offset,
                                     e.table_size))
            e.flags = BME_FLAG_AUTO if b.enabled else 0
            e.granularity_bits = b.granularity.bit_length() - 1
            e.table_offset, e.table_size = self._write_bitmap(b, self.bits(b))
        self._write_directory(drop)
        for b in self.live:
            b.readonly = True
        self._writable = False
        self._tracking = []

    def _write_bitmap(self, b: Bitmap, bits: DirtyBitmap) -> tuple[int, int]:
        """New data clusters, then the new table; returns (table offset, entries)."""
        drv, cs = self.drv, self.cluster_size
        n = table_size_for(bits.size, bits.gbits, cs)
        if n > BME_MAX_TABLE_SIZE or n * cs > BME_MAX_PHYS_SIZE:
            raise BitmapError(f"Bitmap '{b.name}' is too large to be stored")
        table = [0] * n
        for i in range(n):
            state = bits.chunk_state(i, cs)
            if state == 1:
                table[i] = BME_TABLE_ENTRY_ALL_ONES
            elif state == 2:
                off = drv.refcounts.alloc(1)
                drv.overlap.check(off, cs, None)
                drv.file.write(off, bits.chunk(i, cs))
                drv.overlap.add(off, cs, "bitmap_data")
                table[i] = off
        if not n:
            return 0, 0
        raw = struct.pack(f">{n}Q", *table)
        toff = drv.refcounts.alloc(-(-len(raw) // cs))
        drv.overlap.check(toff, len(raw), None)
        drv.file.write(toff, raw)
        drv.overlap.add(toff, len(raw), "bitmap_table")
        if trace.enabled:
            trace.emit("qcow2.bitmap_store", name=b.name, table_offset=toff, entries=n,
                       data_clusters=sum(1 for t in table if t > 1))
        return toff, n

    def _write_directory(self, drop: list[DirEntry]) -> None:
        """Point the header at a new directory of :attr:`entries`, then free the old
        directory and the ``drop`` tables (QEMU update_ext_header_and_dir)."""
        drv, h, cs = self.drv, self.drv.header, self.cluster_size
        old = h.bitmaps
        if self.entries:
            raw = serialize_directory(self.entries)
            doff = drv.refcounts.alloc(-(-len(raw) // cs))
            drv.overlap.check(doff, len(raw), None)
            drv.file.write(doff, raw)
            drv.flush()              # data, tables, directory and refcounts are durable ...
            drv.overlap.add(doff, len(raw), "bitmap_directory")
            h.bitmaps = {"nb_bitmaps": len(self.entries), "reserved32": 0,
                         "bitmap_directory_size": len(raw), "bitmap_directory_offset": doff}
            h.autoclear_features |= AUTOCLEAR_BITMAPS
        else:
            h.bitmaps = None
            h.autoclear_features &= ~AUTOCLEAR_BITMAPS
        drv.rewrite_header()         # ... before the header points at them
        if old and old["bitmap_directory_size"]:
            o, s = old["bitmap_directory_offset"], old["bitmap_directory_size"]
            drv.overlap.remove(o, s)
            drv.refcounts.free(o, -(-s // cs), discard=False)   # QEMU: DISCARD_OTHER
        for e in drop:
            self._free_table(e)

    def _free_table(self, e: DirEntry) -> None:
        """Free a replaced bitmap's data clusters and table (QEMU free_bitmap_clusters)."""
        drv, cs = self.drv, self.cluster_size
        raw = bytearray(e.table_size * 8)
        drv.file.read(e.table_offset, memoryview(raw))
        for t in struct.unpack(f">{e.table_size}Q", raw):
            off = t & BME_TABLE_ENTRY_OFFSET_MASK
            if off:
                if off % cs or drv.overlap.kind_at(off) not in (None, "bitmap_data"):
                    # never drop the refcount of a cluster that is not the bitmap's
                    drv.signal_corruption(f"Bitmap '{e.name}': refusing to free cluster "
                                          f"{off:#x} (unaligned or metadata)")
                drv.overlap.remove(off, cs)
                drv.refcounts.free(off, 1)                # QEMU: DISCARD_ALWAYS
        drv.overlap.remove(e.table_offset, e.table_size * 8)
        drv.refcounts.free(e.table_offset, -(-(e.table_size * 8) // cs), discard=False)
