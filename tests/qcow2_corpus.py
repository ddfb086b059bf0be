"""A corpus of damaged qcow2 images: one metadata field poked per kind (issue #12).

The base image is made by qemu-img/qemu-io and holds every kind of cluster the
format has: normal data, a compressed cluster, a zero cluster, a cluster shared
with an internal snapshot (so its L2 table is copied on write), and a persistent
dirty bitmap with an allocated bitmap table.  :func:`locate` finds every
metadata structure in it by reading the file with ``struct`` only — independent
of blockbed's parser, so a bug there cannot hide a damage.

Each :class:`Damage` names one field and the value written into it.  The
properties the corpus is checked against (tests/test_qcow2_corpus.py and the
random variant tests/test_qcow2_fuzz.py) do not depend on the kind:

* no command crashes (every failure is a one-line error),
* read-only commands never change the file,
* a read that succeeds returns the image's real data,
* a write that succeeds reads back, and does not make ``qemu-img check`` worse.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CLUSTER = 65536
SIZE = 4 << 20
OFF_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62

#: (qemu-io command, guest range) that build the base image, in order.
BUILD_COMMANDS = [
    "write -P 0x11 0 64k",
    "write -P 0x22 64k 64k",
    "write -c -P 0x33 1M 64k",
    "write -P 0x44 3M 64k",
    "write -z 2M 64k",
]
AFTER_SNAPSHOT = ["write -P 0x55 0 4k", "write -P 0x66 3M 4k"]


@dataclass
class Layout:
    """Where the base image keeps its metadata (file offsets)."""
    flen: int
    l1: int
    l1_size: int
    reftable: int
    reftable_clusters: int
    refblock0: int
    l2: int                     # active L2 table of L1 index 0
    l2_entries: list[int]
    snapshots: int
    snap_l1: int
    snap_l2: int
    compressed_entry_index: int
    bitmap_ext: int             # file offset of the bitmaps header extension body
    bitmap_dir: int
    bitmap_table: int
    data0: int                  # host offset of guest cluster 0 (active)
    extra: dict = field(default_factory=dict)


def _u64(b: bytes, off: int) -> int:
    return struct.unpack_from(">Q", b, off)[0]


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from(">I", b, off)[0]


def locate(path: Path) -> Layout:
    b = path.read_bytes()
    l1_size, l1 = _u32(b, 36), _u64(b, 40)
    rt, rtc = _u64(b, 48), _u32(b, 56)
    snaps = _u64(b, 64)
    l2 = _u64(b, l1) & OFF_MASK
    entries = [_u64(b, l2 + 8 * i) for i in range(64)]
    comp = next(i for i, e in enumerate(entries) if e & COMPRESSED)
    snap_l1 = _u64(b, snaps)
    snap_l2 = _u64(b, snap_l1) & OFF_MASK
    # header extensions start after the header (header_length at 100 for v3)
    pos = _u32(b, 100)
    bext = bdir = btab = 0
    while pos + 8 <= CLUSTER:
        typ, ln = _u32(b, pos), _u32(b, pos + 4)
        if typ == 0:
            break
        if typ == 0x23852875:
            bext = pos + 8
            bdir = _u64(b, bext + 16)
            btab = _u64(b, bdir)
        pos += 8 + (ln + 7) // 8 * 8
    return Layout(flen=len(b), l1=l1, l1_size=l1_size, reftable=rt, reftable_clusters=rtc,
                  refblock0=_u64(b, rt), l2=l2, l2_entries=entries, snapshots=snaps,
                  snap_l1=snap_l1, snap_l2=snap_l2, compressed_entry_index=comp,
                  bitmap_ext=bext, bitmap_dir=bdir, bitmap_table=btab,
                  data0=entries[0] & OFF_MASK)


def build_base(qemu_img: str, qemu_io: str, path: Path, bitmap: bool = True) -> bytes:
    """Create the base image; return its guest content (qemu-img convert -O raw).
    ``bitmap=False``: without the persistent bitmap."""
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), str(SIZE)], check=True)
    args = [qemu_io]
    for c in BUILD_COMMANDS:
        args += ["-c", c]
    subprocess.run(args + [str(path)], check=True, capture_output=True)
    subprocess.run([qemu_img, "snapshot", "-c", "s1", str(path)], check=True)
    if bitmap:
        subprocess.run([qemu_img, "bitmap", "--add", str(path), "b0"], check=True)
    args = [qemu_io]
    for c in AFTER_SNAPSHOT:
        args += ["-c", c]
    subprocess.run(args + [str(path)], check=True, capture_output=True)
    raw = path.with_suffix(".raw")
    subprocess.run([qemu_img, "convert", "-O", "raw", str(path), str(raw)], check=True)
    data = raw.read_bytes()
    raw.unlink()
    return data


#: guest ranges written by the write property: normal, COW'd (snapshot), compressed,
#: zero, partially written and unallocated clusters.
WRITES = [(0, 4096), (64 << 10, 64 << 10), (1 << 20, 8192), (2 << 20, 4096),
          ((3 << 20) + 8192, 4096), ((3 << 20) + (512 << 10), 65536)]
#: then ranges freed: (kind, offset, length); afterwards they read as zeros (no backing)
FREES = [("discard", 3 << 20, 64 << 10), ("zero-unmap", 64 << 10, 64 << 10),
         ("zero", 2 << 20, 64 << 10)]

def expected_after(done: list[int], freed: list[int]) -> dict:
    """What each durable operation's range must read: a write's pattern unless a
    later durable free covered it, and zeros for a durable free."""
    out: dict = {}
    for i in done:
        off, n = WRITES[i]
        if any(FREES[j][1] < off + n and off < FREES[j][1] + FREES[j][2] for j in freed):
            continue
        out[i] = bytes([0x70 + i]) * n
    for j in freed:
        out[f"f{j}"] = bytes(FREES[j][2])
    return out


@dataclass(frozen=True)
class Damage:
    """Write ``width`` bytes (big endian) of ``value(layout)`` at ``where(layout)``.
    ``truncate``: instead cut the file to ``value(layout)`` bytes."""
    name: str
    where: Callable[[Layout], int]
    value: Callable[[Layout], int]
    width: int = 8
    truncate: bool = False
    #: the damage leaves a *valid* image with other content (e.g. an entry that now
    #: says "unallocated"): the reference for what reads back is then qemu-img's
    #: reading of the damaged image, not the base image's data
    valid: bool = False
    #: qemu-img check counts references from garbage no I/O reads (L1 entries past the
    #: virtual size): its corruption count moves whenever the file grows, so the
    #: write property only requires that flushed writes read back
    garbage: bool = False


def apply(path: Path, dmg: Damage, lay: Layout) -> None:
    with open(path, "r+b") as f:
        if dmg.truncate:
            f.truncate(dmg.value(lay))
            return
        f.seek(dmg.where(lay))
        v = dmg.value(lay) & ((1 << (8 * dmg.width)) - 1)
        f.write(v.to_bytes(dmg.width, "big"))


def poke(path: Path, offset: int, value: int, width: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write((value & ((1 << (8 * width)) - 1)).to_bytes(width, "big"))


def _past_eof(lay: Layout) -> int:
    return (lay.flen + 16 * CLUSTER) // CLUSTER * CLUSTER


def _l2e(i: int) -> Callable[[Layout], int]:
    return lambda lay: lay.l2 + 8 * i


L1_0 = lambda lay: lay.l1                           # noqa: E731
L2_0 = _l2e(0)
L2_COMP = lambda lay: lay.l2 + 8 * lay.compressed_entry_index   # noqa: E731
COMP_BITS = 62 - (16 - 8)       # 64 KiB clusters: csize field starts at bit 54


def _comp(lay: Layout) -> int:
    return lay.l2_entries[lay.compressed_entry_index]


def _comp_off(lay: Layout) -> int:
    return _comp(lay) & ((1 << COMP_BITS) - 1)


KINDS: list[Damage] = [
    # --- header fields -------------------------------------------------------------
    Damage("hdr-l1-offset-unaligned", lambda _: 40, lambda l: l.l1 + 512),
    Damage("hdr-l1-offset-past-eof", lambda _: 40, _past_eof),
    Damage("hdr-l1-offset-zero", lambda _: 40, lambda _: 0),
    Damage("hdr-l1-size-huge", lambda _: 36, lambda _: 0x7FFFFFFF, 4),
    Damage("hdr-l1-size-65536", lambda _: 36, lambda _: 65536, 4, garbage=True),
    Damage("hdr-l1-size-zero", lambda _: 36, lambda _: 0, 4),
    Damage("hdr-reftable-unaligned", lambda _: 48, lambda l: l.reftable + 512),
    Damage("hdr-reftable-past-eof", lambda _: 48, _past_eof),
    Damage("hdr-reftable-zero", lambda _: 48, lambda _: 0),
    Damage("hdr-reftable-clusters-huge", lambda _: 56, lambda _: 0x7FFFFFFF, 4),
    Damage("hdr-reftable-clusters-zero", lambda _: 56, lambda _: 0, 4),
    Damage("hdr-snapshots-unaligned", lambda _: 64, lambda l: l.snapshots + 8),
    Damage("hdr-snapshots-past-eof", lambda _: 64, _past_eof),
    Damage("hdr-nb-snapshots-huge", lambda _: 60, lambda _: 0xFFFF, 4),
    Damage("hdr-size-huge", lambda _: 24, lambda _: 1 << 62),
    Damage("hdr-cluster-bits-31", lambda _: 20, lambda _: 31, 4),
    Damage("hdr-cluster-bits-8", lambda _: 20, lambda _: 8, 4),
    Damage("hdr-refcount-order-7", lambda _: 96, lambda _: 7, 4),
    Damage("hdr-header-length-short", lambda _: 100, lambda _: 72, 4),
    Damage("hdr-header-length-huge", lambda _: 100, lambda _: 0x100000, 4),
    Damage("hdr-unknown-incompat-bit", lambda _: 72, lambda _: 1 << 20),
    Damage("hdr-backing-offset-huge", lambda _: 8, lambda _: 1 << 40),
    Damage("hdr-backing-size-huge", lambda _: 16, lambda _: 0xFFFFFFFF, 4),
    Damage("file-truncated-mid-l2", lambda _: 0, lambda l: l.l2 + 100, truncate=True),
    Damage("file-truncated-header", lambda _: 0, lambda _: 100, truncate=True),
    # --- active L1 -------------------------------------------------------------------
    Damage("l1-unaligned", L1_0, lambda l: COPIED | (l.l2 + 512)),
    Damage("l1-past-eof", L1_0, lambda l: COPIED | _past_eof(l)),
    Damage("l1-to-l1", L1_0, lambda l: COPIED | l.l1),
    Damage("l1-to-reftable", L1_0, lambda l: COPIED | l.reftable),
    Damage("l1-to-refblock", L1_0, lambda l: COPIED | l.refblock0),
    Damage("l1-to-data", L1_0, lambda l: COPIED | l.data0),
    Damage("l1-to-snapshot-table", L1_0, lambda l: COPIED | l.snapshots),
    Damage("l1-high-bits", L1_0, lambda l: COPIED | (1 << 57) | l.l2),
    # --- active L2 (guest cluster 0 unless named) -------------------------------------
    Damage("l2-unaligned", L2_0, lambda l: COPIED | (l.data0 + 512)),
    Damage("l2-past-eof", L2_0, lambda l: COPIED | _past_eof(l)),
    Damage("l2-copied-offset-zero", L2_0, lambda l: COPIED | 0, valid=True),
    Damage("l2-to-l1", L2_0, lambda l: COPIED | l.l1),
    Damage("l2-to-own-l2", L2_0, lambda l: COPIED | l.l2),
    Damage("l2-to-reftable", L2_0, lambda l: COPIED | l.reftable),
    Damage("l2-to-refblock", L2_0, lambda l: COPIED | l.refblock0),
    Damage("l2-to-snapshot-l1", L2_0, lambda l: COPIED | l.snap_l1),
    Damage("l2-to-bitmap-dir", L2_0, lambda l: COPIED | l.bitmap_dir),
    Damage("l2-to-bitmap-table", _l2e(1), lambda l: COPIED | l.bitmap_table),
    # an unshared-looking entry (no COPIED) on another guest cluster's data: reads
    # as QEMU reads it (nothing can tell), but a COW must not free the other's cluster
    Damage("l2-uncopied-to-other-data", L2_0, lambda l: l.l2_entries[48] & OFF_MASK,
           valid=True),
    Damage("l2-zero-alloc-unaligned", L2_0, lambda l: COPIED | 1 | (l.data0 + 4096)),
    Damage("l2-compressed-past-eof", L2_COMP,
           lambda l: COMPRESSED | (_comp(l) & ~((1 << COMP_BITS) - 1)) | _past_eof(l)),
    Damage("l2-compressed-into-header", L2_COMP,
           lambda l: COMPRESSED | (_comp(l) & ~((1 << COMP_BITS) - 1)) | 8),
    Damage("l2-compressed-size-max", L2_COMP,
           lambda l: COMPRESSED | (0xFF << COMP_BITS) | _comp_off(l)),
    Damage("l2-compressed-garbage-data", _comp_off, lambda _: 0xDEADBEEFDEADBEEF),
    Damage("l2-compressed-and-copied", L2_COMP, lambda l: COPIED | _comp(l)),
    # --- refcounts ---------------------------------------------------------------------
    Damage("reftable-entry-unaligned", lambda l: l.reftable, lambda l: l.refblock0 + 512),
    Damage("reftable-entry-past-eof", lambda l: l.reftable, _past_eof),
    Damage("reftable-entry-zero", lambda l: l.reftable, lambda _: 0),
    Damage("reftable-entry-to-l1", lambda l: l.reftable, lambda l: l.l1),
    Damage("refblock-l1-refcount-zero", lambda l: l.refblock0 + 2 * (l.l1 // CLUSTER),
           lambda _: 0, 2),
    Damage("refblock-l2-refcount-zero", lambda l: l.refblock0 + 2 * (l.l2 // CLUSTER),
           lambda _: 0, 2),
    Damage("refblock-header-refcount-zero", lambda l: l.refblock0, lambda _: 0, 2),
    Damage("refblock-refcount-max", lambda l: l.refblock0 + 2 * (l.data0 // CLUSTER),
           lambda _: 0xFFFF, 2),
    # --- snapshot table -------------------------------------------------------------------
    Damage("snap-l1-unaligned", lambda l: l.snapshots, lambda l: l.snap_l1 + 512),
    Damage("snap-l1-past-eof", lambda l: l.snapshots, _past_eof),
    Damage("snap-l1-size-huge", lambda l: l.snapshots + 8, lambda _: 0x7FFFFFFF, 4),
    Damage("snap-extra-size-huge", lambda l: l.snapshots + 36, lambda _: 0x7FFFFFFF, 4),
    Damage("snap-id-size-huge", lambda l: l.snapshots + 12, lambda _: 0xFFFF, 2),
    Damage("snap-l1-entry-unaligned", lambda l: l.snap_l1, lambda l: l.snap_l2 + 512),
    # --- persistent bitmaps -----------------------------------------------------------------
    Damage("bitmap-dir-unaligned", lambda l: l.bitmap_ext + 16, lambda l: l.bitmap_dir + 8),
    Damage("bitmap-dir-past-eof", lambda l: l.bitmap_ext + 16, _past_eof),
    Damage("bitmap-dir-size-huge", lambda l: l.bitmap_ext + 8, lambda _: 1 << 40),
    Damage("bitmap-count-wrong", lambda l: l.bitmap_ext, lambda _: 5, 4),
    Damage("bitmap-table-unaligned", lambda l: l.bitmap_dir, lambda l: l.bitmap_table + 512),
    Damage("bitmap-table-size-huge", lambda l: l.bitmap_dir + 8, lambda _: 0x7FFFFFFF, 4),
    Damage("bitmap-data-to-l2", lambda l: l.bitmap_table, lambda l: l.l2),
    Damage("bitmap-data-all-ones-with-offset", lambda l: l.bitmap_table,
           lambda l: l.data0 | 1),
    Damage("bitmap-granularity-bad", lambda l: l.bitmap_dir + 17, lambda _: 70, 1),
]


def make(base: Path, dst: Path, dmg: Damage) -> Layout:
    """Copy the base image to ``dst`` and apply ``dmg``; return the base layout."""
    shutil.copy(base, dst)
    lay = locate(base)
    apply(dst, dmg, lay)
    return lay
