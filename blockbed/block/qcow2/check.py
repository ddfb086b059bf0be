"""Consistency check and repair, modelled on QEMU's qcow2_check_refcounts.

The check walks every structure that references clusters (header, refcount
table and blocks, active and snapshot L1/L2 tables, data and compressed
clusters, snapshot table, bitmap directory and tables), counts references per
cluster, and compares with the stored refcounts:

- stored > references: a *leak* (harmless, wastes space)
- stored < references: a *corruption* (a cluster could be reused while in use)
- OFLAG_COPIED set exactly when the refcount is 1 (active tables only)
- table offsets aligned and inside the file

Repair (``-r leaks`` / ``-r all``) sets the stored refcounts to the counted
references; when a needed refcount block is missing or broken, the whole
refcount structure is rebuilt at the end of the image and the header switched
to it in one write after everything else is durable.
"""

from __future__ import annotations

import os
import itertools
import struct
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .cache import load_be_array
from .corrupt import c_hex
from .cluster import (L1E_OFFSET_MASK, L1E_RESERVED, L2E_OFFSET_MASK, L2E_STD_RESERVED,
                      OFLAG_COPIED, OFLAG_ZERO, ClusterType)
from .header import AUTOCLEAR_BITMAPS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, BitmapDirEntry
from .checksnap import fix_snapshot_table, incomplete_snapshots, snapshot_table_unusable
from .rebuild import RebuildFailed, rebuild_refcounts
from .refcount import REFT_OFFSET_MASK, RefcountCodec

if TYPE_CHECKING:
    from .driver import Qcow2Driver


@dataclass
class CheckResult:
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    messages: list[str] = field(default_factory=list)
    failed: str | None = None     # the check itself failed (qemu-img: "Check failed: …")

    def exit_code(self) -> int:
        """qemu-img check's exit status: 1 internal error, 2 corruption, 3 leaks, 0 clean."""
        if self.check_errors or self.failed:
            return 1
        if self.corruptions:
            return 2
        if self.leaks:
            return 3
        return 0


_WIDTH_TYPECODE = {3: "B", 4: "H", 5: "I", 6: "Q"}


class _Refs:
    """Reference counts per cluster.  The array covers the file (and grows a little past
    its end); references far beyond it go to a dict, so a hostile L2 entry pointing
    at 2^55 costs one dict entry, not gigabytes."""

    def __init__(self, n: int, typecode: str = "I"):
        self.a = array(typecode, bytes(array(typecode).itemsize * n))
        self.n = n
        self.limit = 2 * n + (1 << 16)
        self.extra: dict[int, int] = {}

    def grow_to(self, n: int) -> None:
        if n > self.n:
            self.a.extend(array(self.a.typecode, bytes(self.a.itemsize * (n - self.n))))
            self.n = n

    def inc(self, ci: int) -> None:
        if ci >= self.n:
            if ci >= self.limit:
                self.extra[ci] = self.extra.get(ci, 0) + 1
                return
            self.grow_to(min(self.limit, max(ci + 1, self.n + (self.n >> 2) + 16)))
        self.a[ci] += 1


class _Checker:
    def __init__(self, drv: "Qcow2Driver", res: CheckResult):
        self.drv = drv
        self.res = res
        self.file = drv.file
        self.cb = drv.cluster_bits
        self.cs = drv.cluster_size
        self.flen = drv.file.length()
        self.nb = -(-self.flen // self.cs)
        self.codec = RefcountCodec(drv.header.refcount_order, self.cs)
        # counts never exceed the refcount width (inc_range stops at its maximum), so
        # references and stored refcounts are arrays of that width: a sparse file of
        # 1 TiB costs 2 bytes per cluster with 16-bit refcounts, as in QEMU
        self.tc = _WIDTH_TYPECODE[max(3, drv.header.refcount_order)]
        self.refs = _Refs(self.nb, self.tc)
        self.max_ref = -1
        self.rb_bits = self.codec.entries.bit_length() - 1
        self.fix_errors = False
        self.broken: set[int] = set()
        self.rebuild = False          # QEMU check_refblocks' *rebuild
        self.unreadable: set[int] = set()    # table indices whose block gives EIO

    def msg(self, s: str) -> None:
        self.res.messages.append(s)

    def inc_range(self, off: int, length: int) -> None:
        """QEMU qcow2_inc_refcounts_imrt: one reference to every cluster of the range.

        A range reaching a whole cluster or more past the end of the file is a
        corruption and is not counted; a count at the refcount width's maximum
        is an overflow."""
        if length <= 0:
            return
        if off + length - self.flen >= self.cs:
            self.msg("ERROR: counting reference for region exceeding the end of the file by "
                     f"one cluster or more: offset {off:#x} size {length:#x}")
            self.res.corruptions += 1
            return
        refs, rmax = self.refs, self.codec.max
        for ci in range(off >> self.cb, ((off + length - 1) >> self.cb) + 1):
            if ci < refs.n and refs.a[ci] >= rmax:
                self.msg(f"ERROR: overflow cluster offset={ci << self.cb:#x}")
                self.msg("Use qemu-img amend to increase the refcount entry width or "
                         "qemu-img convert to create a clean copy if the image cannot be "
                         "opened for writing")
                self.res.corruptions += 1
                continue
            refs.inc(ci)
            if ci > self.max_ref:
                self.max_ref = ci

    def read(self, off: int, length: int) -> bytes:
        if off + length > self.flen:
            avail = max(0, self.flen - off)
            buf = bytearray(length)
            if avail:
                self.file.read(off, memoryview(buf)[:avail])
            return bytes(buf)
        buf = bytearray(length)
        self.file.read(off, memoryview(buf))
        return bytes(buf)

    # --- walkers (QEMU calculate_refcounts, check_refcounts_l1/l2) ---------------------
    def walk_l1(self, l1, active: bool) -> None:
        res, cs = self.res, self.cs
        mp = self.drv.mapping
        ctype = self.drv._ctype
        data_file = self.drv.has_data_file
        for e in l1:
            if not e:
                continue
            if e & L1E_RESERVED:
                self.msg(f"ERROR found L1 entry with reserved bits set: {e:x}")
                res.corruptions += 1
            l2off = e & L1E_OFFSET_MASK
            self.inc_range(l2off, cs)
            if l2off & (cs - 1):
                self.msg(f"ERROR l2_offset={l2off:x}: Table is not cluster aligned; "
                         "L1 entry corrupted")
                res.corruptions += 1
            table = load_be_array("Q", self.read(l2off, cs))
            bitmaps = table[1::2] if mp.stride == 2 else None
            if bitmaps is not None:
                table = table[::2]
            nxt = 0          # QEMU counts fragmentation within one L2 table
            # only nonzero entries matter (with extended L2 a zero descriptor may still
            # carry a bitmap); compress() skips the zeros at C speed, which keeps a
            # hostile L1 of 65536 garbage entries from taking minutes
            slots = range(len(table)) if bitmaps is not None else \
                itertools.compress(range(len(table)), table)
            for i in slots:
                le = table[i]
                t = ctype(le)
                if bitmaps is not None:
                    from .subcluster import check_bitmap
                    problem, skip = check_bitmap(t, le, bitmaps[i], i)
                    if problem:
                        self.msg(problem)
                        res.corruptions += 1
                    if skip:
                        continue
                if t != ClusterType.COMPRESSED and le & L2E_STD_RESERVED:
                    self.msg(f"ERROR found l2 entry with reserved bits set: {le:x}")
                    res.corruptions += 1
                if t == ClusterType.COMPRESSED:
                    if le & OFLAG_COPIED:
                        self.msg(f"ERROR: coffset={le & mp.coffset_mask:#x}: copied flag must "
                                 "never be set for compressed clusters")
                        le &= ~OFLAG_COPIED
                        res.corruptions += 1
                    if data_file:
                        self.msg(f"ERROR compressed cluster {i} with data file, "
                                 f"entry={le:#x}")
                        res.corruptions += 1
                        continue
                    coff, csize = mp.compressed_range(le)
                    self.inc_range(coff, csize)
                    if active:
                        res.allocated_clusters += 1
                        res.compressed_clusters += 1
                        res.fragmented_clusters += 1
                elif t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
                    off = le & L2E_OFFSET_MASK
                    if off & (cs - 1):
                        res.corruptions += 1
                        if le & OFLAG_ZERO:
                            word = "Repairing" if self.fix_errors else "ERROR"
                            self.msg(f"{word} offset={off:x}: Preallocated cluster is not "
                                     "properly aligned; L2 entry corrupted.")
                            if self.fix_errors:
                                # QEMU turns it into a plain zero cluster, written at once
                                import struct as _s
                                self.drv.overlap.check(l2off + 8 * i, 8, "l2")
                                self.file.write(l2off + 8 * i, _s.pack(">Q", OFLAG_ZERO))
                                self.file.flush()
                                self.drv.mapping.cache.forget(l2off)
                                res.corruptions -= 1
                                res.corruptions_fixed += 1
                                continue
                        else:
                            self.msg(f"ERROR offset={off:x}: Data cluster is not properly "
                                     "aligned; L2 entry corrupted.")
                    if active:
                        res.allocated_clusters += 1
                        if nxt and off != nxt:
                            res.fragmented_clusters += 1
                        nxt = off + cs
                    if not data_file:
                        self.inc_range(off, cs)

    def walk_everything(self) -> None:
        drv, h, cs = self.drv, self.drv.header, self.cs
        self.inc_range(0, cs)                                       # header
        if h.l1_size:
            self.inc_range(h.l1_table_offset, h.l1_size * 8)        # active L1
        self.walk_l1(drv.mapping.l1, active=True)
        if h.nb_snapshots:
            # as read at open (or repaired by _snapshot_table_unusable)
            snaps, nbytes = drv.snapshots, drv.snapshot_table_bytes
            if drv.has_data_file:
                self.msg(f"ERROR {len(snaps)} snapshots in image with data file")
                self.res.corruptions += 1
            for si, sn in enumerate(snaps):
                # QEMU qcow2_check_read_snapshot_table: a bad L1 reference is reported
                # (and -r all drops the entry); its tree is not walked
                bad = None
                if sn.l1_size > (32 << 20) // 8:
                    bad = f"l1_size={sn.l1_size:#x}: L1 table is too large"
                elif sn.l1_table_offset % cs:
                    bad = f"l1_offset={sn.l1_table_offset:#x}: L1 table is not cluster aligned"
                if bad:
                    self.msg(f"ERROR snapshot {sn.id_str} ({sn.name}) {bad}; "
                             "snapshot table entry corrupted")
                    self.res.corruptions += 1
                    continue
                if sn.l1_size:
                    self.inc_range(sn.l1_table_offset, sn.l1_size * 8)
                    raw = self.read(sn.l1_table_offset, sn.l1_size * 8)
                    self.walk_l1(list(struct.unpack(f">{sn.l1_size}Q", raw)), active=False)
            self.inc_range(h.snapshots_offset, nbytes)
        self.inc_range(h.refcount_table_offset, h.refcount_table_clusters * cs)
        if h.crypto:
            self.inc_range(h.crypto["offset"], h.crypto["length"])
        if h.bitmaps and h.autoclear_features & AUTOCLEAR_BITMAPS:
            self.walk_bitmaps(h.bitmaps)
        self.check_refblocks()

    def check_refblocks(self) -> None:
        """QEMU check_refblocks: every refcount block aligned, inside the file, used once."""
        cs = self.cs
        for ti, e in enumerate(self.drv.refcounts.table):
            off = e & REFT_OFFSET_MASK
            ci = off >> self.cb
            if e & ~REFT_OFFSET_MASK:
                self.msg(f"ERROR refcount table entry {ti} has reserved bits set")
                self.res.corruptions += 1
                self.broken.add(ti)
                self.rebuild = True
                continue
            if off & (cs - 1):
                self.msg(f"ERROR refcount block {ti} is not cluster aligned; refcount table "
                         "entry corrupted")
                self.res.corruptions += 1
                self.broken.add(ti)
                self.rebuild = True
                continue
            if ci >= max(self.nb, self.refs.n if self.refs.n <= self.nb + 1 else self.nb):
                if self.fix_errors:
                    # QEMU grows the file so the block exists (it then reads as zeros and
                    # the refcount structure is rebuilt)
                    self.msg(f"Repairing refcount block {ti} is outside image")
                    try:
                        self.file.truncate(off + cs)
                    except OSError as e:
                        why = os.strerror(e.errno) if e.errno else str(e)
                        self.msg(f"qemu-img: Could not resize file: {why}")
                        self.msg(f"ERROR could not resize image: {why}")
                        self.res.corruptions += 1
                        self.broken.add(ti)
                        self.rebuild = True
                        continue
                    self.flen = self.file.length()
                    self.nb = -(-self.flen // cs)
                    self.res.corruptions_fixed += 1
                else:
                    self.msg(f"ERROR refcount block {ti} is outside image")
                    self.res.corruptions += 1
                    self.broken.add(ti)
                    continue
            if off:
                self.inc_range(off, cs)
                n = self.refs.a[ci] if ci < self.refs.n else 0
                if n != 1:
                    self.msg(f"ERROR refcount block {ti} refcount={n}")
                    self.res.corruptions += 1
                    self.broken.add(ti)
                    self.rebuild = True

    def walk_bitmaps(self, ext: dict) -> None:
        doff, dsize = ext["bitmap_directory_offset"], ext["bitmap_directory_size"]
        if not dsize or dsize > (64 << 20) or doff % self.cs:
            return
        self.inc_range(doff, dsize)
        raw = self.read(doff, dsize)
        pos = 0
        for _ in range(ext["nb_bitmaps"]):
            if pos + 24 > len(raw):
                break
            e = BitmapDirEntry.parse(raw[pos:pos + 24])
            self.inc_range(e.bitmap_table_offset, e.bitmap_table_size * 8)
            if e.bitmap_table_size and e.bitmap_table_size < (1 << 24):
                tab = load_be_array("Q", self.read(e.bitmap_table_offset, e.bitmap_table_size * 8))
                for be in tab:
                    off = be & 0x00FFFFFFFFFFFE00
                    if off:
                        self.inc_range(off, self.cs)
            pos += (24 + e.extra_data_size + e.name_size + 7) & ~7

    # --- stored refcounts ---------------------------------------------------------------
    def stored_one(self, ci: int) -> int:
        ti = ci >> self.rb_bits
        table = self.drv.refcounts.table
        off = table[ti] if ti < len(table) else 0
        if not off or off % self.cs or off >= self.flen:
            return 0
        blk = self.codec.load(self.read(off, self.cs))
        return self.codec.get(blk, ci & ((1 << self.rb_bits) - 1))

    def zeros(self, n: int) -> array:
        return array(self.tc, bytes(array(self.tc).itemsize * n))

    def stored(self) -> tuple[array, set[int]]:
        """Stored refcounts for clusters [0, n) and the table indices whose block is unusable."""
        n = max(self.nb, self.refs.n)
        out = self.zeros(n)
        broken: set[int] = set()
        table = self.drv.refcounts.table
        self.unreadable = set()
        for ti in range(min(len(table), (n >> self.rb_bits) + 1)):
            off = table[ti]
            if not off:
                continue
            if off & REFT_OFFSET_MASK & (self.cs - 1):
                # QEMU qcow2_get_refcount masks the reserved bits and refuses an
                # unaligned block with EIO: its clusters have no stored refcount
                self.unreadable.add(ti)
            if off % self.cs or off >= self.flen:
                broken.add(ti)
                continue
            blk = self.codec.load(self.read(off, self.cs))
            vals = blk if self.codec.order >= 3 else array(self.tc, self.codec.all_values(blk))
            base = ti << self.rb_bits
            k = min(len(vals), n - base)
            if k > 0:
                out[base:base + k] = vals[:k]
        return out, broken


def check_image(drv: "Qcow2Driver", repair: str | None = None) -> CheckResult:
    """Check (and with ``repair`` = "leaks" or "all", repair) the image behind ``drv``."""
    if not drv.read_only and not drv.corrupt:
        drv.flush()
    res = CheckResult()
    first = _check_once(drv, res, repair)
    if first.failed:
        return first
    if repair and (first.leaks_fixed or first.corruptions_fixed):
        again = CheckResult()
        _check_once(drv, again, None)
        again.leaks_fixed = first.leaks_fixed
        again.corruptions_fixed = first.corruptions_fixed
        again.messages = first.messages + again.messages
        return again
    return first


def _compare(drv: "Qcow2Driver", res: CheckResult, ck: "_Checker", fix_leaks: bool,
             fix_errors: bool) -> tuple[bool, array, int]:
    """QEMU compare_refcounts: report (and, where allowed, fix) every mismatch.

    Returns (rebuild needed, stored refcounts, highest referenced cluster)."""
    stored, _ = ck.stored()
    n = max(ck.nb, ck.refs.n)
    ck.refs.grow_to(n)
    refs_list = ck.refs.a
    stored.extend(ck.zeros(n - len(stored)))
    if ck.unreadable:
        refs_list = array(ck.tc, refs_list)      # a copy: the rebuild needs them all
        _unreadable_blocks(drv, res, ck, n, refs_list, stored)
    # QEMU: the highest cluster with a stored refcount or a reference (stored
    # refcounts count only inside the file)
    highest = -1
    for base in range(((n - 1) // 4096) * 4096 if n else 0, -1, -4096):
        chunk = refs_list[base:base + 4096]
        schunk = stored[base:min(base + 4096, ck.nb)] if base < ck.nb else ck.zeros(0)
        if chunk.count(0) < len(chunk) or schunk.count(0) < len(schunk):
            highest = base + max(j for j in range(len(chunk))
                                 if chunk[j] or (j < len(schunk) and schunk[j]))
            break
    if ck.unreadable:
        highest = max(highest, 0)      # QEMU's highest_cluster starts at cluster 0
    rebuild = False
    rc = drv.refcounts
    fixed_any = False
    for base in range(0, n, 4096):
        if refs_list[base:base + 4096] == stored[base:base + 4096]:
            continue
        for i in range(base, min(n, base + 4096)):
            r, s_ = refs_list[i], stored[i]
            if r == s_ or (i >= ck.nb and r == 0):
                continue
            kind = None
            if s_ == 0:
                rebuild = True
            elif s_ > r and fix_leaks:
                kind = "l"
            elif s_ < r and fix_errors:
                kind = "c"
            word = "Repairing" if kind else ("ERROR" if s_ < r else "Leaked")
            res.messages.append(f"{word} cluster {i} refcount={s_} reference={r}")
            if kind:
                rc.update(i, 1, r - s_)
                stored[i] = r
                fixed_any = True
                if kind == "l":
                    res.leaks_fixed += 1
                else:
                    res.corruptions_fixed += 1
            elif s_ < r:
                res.corruptions += 1
            else:
                res.leaks += 1
    for ci in sorted(ck.refs.extra):
        r = ck.refs.extra[ci]
        s_ = ck.stored_one(ci)
        if r != s_:
            res.messages.append(f"{'ERROR' if s_ < r else 'Leaked'} cluster {ci} "
                                f"refcount={s_} reference={r}")
            if s_ < r:
                res.corruptions += 1
            else:
                res.leaks += 1
        highest = max(highest, ci)
    if fixed_any:
        rc.cache.flush()
    return rebuild, stored, highest


def _unreadable_blocks(drv: "Qcow2Driver", res: CheckResult, ck: "_Checker", n: int,
                       refs_list: array, stored: array) -> None:
    """QEMU compare_refcounts on clusters whose refcount block is unaligned: the
    first lookup signals corruption (marking a writable image corrupt), each
    cluster is "Can't get refcount" (an internal error) and is not compared."""
    ti0 = min(ck.unreadable)
    off = drv.refcounts.table[ti0] & REFT_OFFSET_MASK
    why = f"Refblock offset {c_hex(off)} unaligned (reftable index: {c_hex(ti0)})"
    if drv.read_only:
        res.messages.append(f"qcow2: Image is corrupt: {why}; further non-fatal corruption "
                            "events will be suppressed")
    else:
        res.messages.append(f"qcow2: Marking image as corrupt: {why}; further corruption "
                            "events will be suppressed")
        drv.header.incompatible_features |= INCOMPAT_CORRUPT
        drv._write_features()
        drv.corrupt = True
    for ti in sorted(ck.unreadable):
        for i in range(ti << ck.rb_bits, min(n, (ti + 1) << ck.rb_bits)):
            res.messages.append(f"Can't get refcount for cluster {i}: Input/output error")
            res.check_errors += 1
            refs_list[i] = stored[i] = 0      # neither compared nor the highest cluster


def _check_once(drv: "Qcow2Driver", res: CheckResult, repair: str | None) -> CheckResult:
    """One pass of QEMU's qcow2_check_refcounts + check_oflag_copied."""
    h = drv.header
    res.total_clusters = -(-h.size // drv.cluster_size)
    ck = _Checker(drv, res)
    ck.fix_errors = repair == "all" and not drv.read_only
    cut = snapshot_table_unusable(drv, res, ck.fix_errors)
    if cut is True:
        return res
    incomplete = incomplete_snapshots(drv, res, ck.fix_errors) + cut
    try:
        ck.walk_everything()
    except (OSError, ValueError) as e:
        res.messages.append(f"ERROR: check failed: {e}")
        res.check_errors += 1
        return res
    fix_leaks = repair in ("leaks", "all")
    fix_errors = repair == "all"
    pre = (res.corruptions, res.leaks)
    rebuild, stored, highest = _compare(drv, res, ck, False, False)
    rebuild = rebuild or ck.rebuild
    rebuilt = False
    if rebuild and fix_errors:
        old = (res.corruptions, res.leaks)
        res.messages.append("Rebuilding refcount structure")
        refs = ck.refs.a
        try:
            rebuild_refcounts(drv, refs[:ck.refs.n])
        except RebuildFailed as e:
            res.messages.append(f"qemu-img: {e}")
            res.failed = "Input/output error"
            return res
        rebuilt = True
        res.corruptions = res.leaks = 0
        scratch = CheckResult()
        ck2 = _Checker(drv, scratch)
        ck2.walk_everything()
        again, stored, highest = _compare(drv, scratch, ck2, True, False)
        res.messages.extend(scratch.messages)
        if again:
            res.messages.append("ERROR rebuilt refcount structure is still broken")
        res.corruptions_fixed += old[0] - res.corruptions
        res.leaks_fixed += old[1] - res.leaks
        res.leaks += scratch.leaks
    elif repair:
        if rebuild:
            res.messages.append("ERROR need to rebuild refcount structures")
            res.check_errors += 1
            res.failed = "Input/output error"
            return res
        if res.leaks or res.corruptions:
            res.corruptions, res.leaks = pre
            _, stored, highest = _compare(drv, res, ck, fix_leaks, fix_errors)
    res.image_end_offset = (highest + 1) * drv.cluster_size if highest >= 0 else 0
    # QEMU check_oflag_copied: -r all always repairs; -r leaks only when nothing else is wrong
    copied_fix = fix_errors or (fix_leaks and not (res.check_errors or res.corruptions
                                                   or res.leaks))
    _check_copied(drv, res, stored, copied_fix, ck.unreadable if not rebuilt else set(),
                  ck.rb_bits, ck.stored_one)
    if fix_snapshot_table(drv, res, incomplete, ck.fix_errors):
        return res
    # QEMU qcow2_co_check_locked: a repair that leaves no corruption marks the image
    # clean (dirty bit) and consistent (corrupt bit)
    if repair and not res.corruptions and not res.check_errors and not drv.read_only:
        h = drv.header
        bits = h.incompatible_features & (INCOMPAT_CORRUPT | INCOMPAT_DIRTY)
        if bits:
            h.incompatible_features &= ~bits
            drv._write_features()
            drv.corrupt = False
    return res


def _check_copied(drv: "Qcow2Driver", res: CheckResult, stored: array, fix: bool,
                  unreadable: set[int], rb_bits: int,
                  stored_one: Callable[[int], int]) -> None:
    """OFLAG_COPIED must be set exactly when the refcount is 1 (QEMU check_oflag_copied).
    A cluster whose refcount cannot be read (``unreadable`` refcount blocks) is
    skipped silently, as QEMU does; an L1 table the driver refuses to use
    (``mapping.damage``) is not written."""
    cb, cs = drv.cluster_bits, drv.cluster_size
    mp = drv.mapping
    flen = drv.file.length()

    def rc(off: int) -> int | None:
        ci = off >> cb
        if ci >> rb_bits in unreadable:
            return None
        # past the counted range (a truncated file): what the refcount block says
        return stored[ci] if ci < len(stored) else stored_one(ci)

    for l1i, e in enumerate(mp.l1):
        l2off = e & L1E_OFFSET_MASK
        if not l2off:
            continue
        r = rc(l2off)
        if r is not None and (r == 1) != bool(e & OFLAG_COPIED):
            fix_l1 = fix and not mp.damage
            word = "Repairing" if fix_l1 else "ERROR"
            res.messages.append(f"{word} OFLAG_COPIED L2 cluster: l1_index={l1i} "
                                f"l1_entry={e:x} refcount={r}")
            if fix_l1:
                mp.l1[l1i] = (e | OFLAG_COPIED) if r == 1 else (e & ~OFLAG_COPIED)
                mp.write_l1_entry(l1i)
                res.corruptions_fixed += 1
            else:
                res.corruptions += 1
        if l2off >= flen:
            continue
        raw = bytearray(cs)
        drv.file.read(l2off, memoryview(raw))
        table = load_be_array("Q", raw)
        changed = False
        for i, le in mp.entry_slots(table):
            t = drv._ctype(le)
            if t not in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC) or le & 0x1FE \
                    or drv.has_data_file:
                continue
            r = rc(le & L2E_OFFSET_MASK)
            if r is not None and (r == 1) != bool(le & OFLAG_COPIED):
                word = "Repairing" if fix else "ERROR"
                res.messages.append(f"{word} OFLAG_COPIED data cluster: l2_entry={le:x} "
                                    f"refcount={r}")
                if fix:
                    table[i] = (le | OFLAG_COPIED) if r == 1 else (le & ~OFLAG_COPIED)
                    changed = True
                    res.corruptions_fixed += 1
                else:
                    res.corruptions += 1
        if changed:
            mp.cache.forget(l2off)
            from .cache import dump_be_array
            drv.file.write(l2off, dump_be_array(table))
            drv.file.flush()
