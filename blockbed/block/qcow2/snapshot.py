"""The internal snapshot table (spec "Snapshots").

blockbed reads the table so that ``check`` counts the references of snapshot
L1/L2 tables, ``info`` lists snapshots, and writes copy-on-write clusters the
snapshots share (clusters without OFLAG_COPIED).  :func:`create_snapshot`,
:func:`apply_snapshot` and :func:`delete_snapshot` change snapshots in a
crash-safe order: refcounts go up (durably) before anything new references
them and come down only after the old references are unreachable, so a crash
leaves at most leaks.  VM state is not saved (vm_state_size 0).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from construct import Int16ub, Int32ub, Int64ub, Struct

from ..driver import BlockDriver, BlockError, ImageFormatError

SnapshotEntryHeader = Struct(
    "l1_table_offset" / Int64ub,
    "l1_size" / Int32ub,
    "id_str_size" / Int16ub,
    "name_size" / Int16ub,
    "date_sec" / Int32ub,
    "date_nsec" / Int32ub,
    "vm_clock_nsec" / Int64ub,
    "vm_state_size" / Int32ub,
    "extra_data_size" / Int32ub,
)
_HDR = SnapshotEntryHeader.sizeof()
MAX_SNAPSHOT_TABLE = 64 << 20   # QEMU QCOW_MAX_SNAPSHOTS_SIZE
MAX_EXTRA_DATA = 1024           # QEMU QCOW_MAX_SNAPSHOT_EXTRA_DATA


@dataclass
class Snapshot:
    l1_table_offset: int
    l1_size: int
    id_str: str
    name: str
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: int | None
    icount: int | None


def _read_zero_padded(file: BlockDriver, pos: int, n: int, file_length: int) -> bytearray:
    """``n`` bytes at ``pos``; bytes past the end of the file read as zeros (QEMU's
    bdrv_pread on a file does the same, so a table cut short parses as zeros)."""
    buf = bytearray(n)
    avail = max(0, min(n, file_length - pos))
    if avail:
        file.read(pos, memoryview(buf)[:avail])
    return buf


@dataclass
class TableRepair:
    """What reading the table for ``check -r all`` dropped (QEMU qcow2_do_read_snapshots
    with ``repair``): stderr lines, entries whose extra data was cut to 1024 bytes,
    and snapshots discarded off the end of a too-big table."""
    notes: list[str] = field(default_factory=list)
    extra_dropped: int = 0
    reduced: int = 0


def read_snapshots(file: BlockDriver, offset: int, count: int, cluster_size: int,
                   file_length: int, repair: TableRepair | None = None
                   ) -> tuple[list[Snapshot], int]:
    """Parse ``count`` entries at ``offset``; returns the snapshots and the table's byte size.

    As QEMU 7.2's qcow2_read_snapshots: the table must be aligned, an entry's extra
    data is at most 1024 bytes and the table (with extra data counted up to that)
    at most 64 MiB; the entries' L1 tables are not validated here — an image with
    one bad snapshot still opens and its active data reads;
    :func:`validate_snapshot_l1` refuses the bad snapshot when it is used (apply,
    delete) and ``check`` reports it.  With ``repair`` (check -r all) too much extra
    data is cut and a too-big table loses its overhanging entries instead."""
    if count == 0:
        return [], 0
    if offset % cluster_size:
        raise ImageFormatError("Snapshot table is not cluster aligned")
    out: list[Snapshot] = []
    pos = offset
    table_length = 0
    for i in range(count):
        pre = pos
        table_length = (table_length + 7) & ~7
        pos = (pos + 7) & ~7
        h = SnapshotEntryHeader.parse(_read_zero_padded(file, pos, _HDR, file_length))
        pos += _HDR
        extra_len = h.extra_data_size
        if extra_len > MAX_EXTRA_DATA:
            if repair is None:
                raise ImageFormatError(f"Too much extra metadata in snapshot table entry {i}\n"
                                       "You can force-remove this extra metadata with "
                                       "qemu-img check -r all")
            repair.notes.append(f"Discarding too much extra metadata in snapshot table entry "
                                f"{i} ({extra_len} > {MAX_EXTRA_DATA})")
            repair.extra_dropped += 1
        extra = bytes(_read_zero_padded(file, pos, min(24, extra_len), file_length))
        pos += extra_len            # unknown extra data is skipped (not kept on rewrite)
        body = _read_zero_padded(file, pos, h.id_str_size + h.name_size, file_length)
        pos += h.id_str_size + h.name_size
        table_length += _HDR + min(extra_len, MAX_EXTRA_DATA) + h.id_str_size + h.name_size
        if table_length > MAX_SNAPSHOT_TABLE or pos - offset > 0x7FFFFFFF:
            if repair is None:
                raise ImageFormatError(f"Snapshot table is too big\nYou can force-remove all "
                                       f"{count - i} overhanging snapshots with qemu-img "
                                       "check -r all")
            repair.notes.append(f"Discarding {count - i} overhanging snapshots (snapshot "
                                "table is too big)")
            repair.reduced += count - i
            pos = pre
            break
        vm_state = int.from_bytes(extra[0:8], "big") if len(extra) >= 8 else h.vm_state_size
        disk_size = int.from_bytes(extra[8:16], "big") if len(extra) >= 16 else None
        icount = int.from_bytes(extra[16:24], "big") if len(extra) >= 24 else None
        id_str = bytes(body[:h.id_str_size]).decode("utf-8", "replace")
        name = bytes(body[h.id_str_size:]).decode("utf-8", "replace")
        out.append(Snapshot(h.l1_table_offset, h.l1_size, id_str, name, h.date_sec, h.date_nsec,
                            h.vm_clock_nsec, vm_state, disk_size, icount))
    return out, pos - offset


def validate_snapshot_l1(snap: Snapshot, cluster_size: int, file_length: int) -> None:
    """QEMU qcow2_validate_table(..., "Snapshot L1 table"): before a snapshot's L1
    table is read for apply/delete, its size and offset must make sense."""
    if snap.l1_size > (32 << 20) // 8:
        raise ImageFormatError("Snapshot L1 table too large")
    if snap.l1_table_offset % cluster_size or snap.l1_table_offset + snap.l1_size * 8 > 2**63 - 1:
        raise ImageFormatError("Snapshot L1 table offset invalid")
    if snap.l1_size and snap.l1_table_offset + snap.l1_size * 8 > file_length:
        # QEMU would read zeros (every cluster of the snapshot unallocated); refuse
        raise ImageFormatError("Snapshot L1 table is beyond the end of the image file")


# --- writing the table and changing snapshots (QEMU block/qcow2-snapshot.c) ---------------

def encode_snapshots(snaps: list[Snapshot]) -> bytes:
    """The snapshot table as QEMU 7.2 writes it (24 bytes of extra data per entry; an
    unknown icount is written as -1, QEMU's "none")."""
    out = bytearray()
    for s in snaps:
        idb, nameb = s.id_str.encode(), s.name.encode()
        extra = (s.vm_state_size.to_bytes(8, "big")
                 + (s.disk_size or 0).to_bytes(8, "big")
                 + ((s.icount if s.icount is not None else -1) & (2**64 - 1)).to_bytes(8, "big"))
        out += SnapshotEntryHeader.build(dict(
            l1_table_offset=s.l1_table_offset, l1_size=s.l1_size, id_str_size=len(idb),
            name_size=len(nameb), date_sec=s.date_sec, date_nsec=s.date_nsec,
            vm_clock_nsec=s.vm_clock_nsec, vm_state_size=min(s.vm_state_size, 2**32 - 1),
            extra_data_size=len(extra)))
        out += extra + idb + nameb
        out += bytes(-len(out) % 8)
    return bytes(out)


def _tree_refcounts(drv, l1: "list[int] | object", delta: int) -> None:
    """Add ``delta`` to the refcount of every L2 table and data cluster under ``l1``
    (QEMU qcow2_update_snapshot_refcount without the flag update)."""
    from .cluster import L1E_OFFSET_MASK, L2E_OFFSET_MASK, ClusterType
    rc, cb = drv.refcounts, drv.cluster_bits
    for e in l1:
        l2off = e & L1E_OFFSET_MASK
        if not l2off:
            continue
        if delta:
            rc.update(l2off >> cb, 1, delta)
        table = drv.mapping.cache.get(l2off)
        for _, le in drv.mapping.entry_slots(table):
            t = drv._ctype(le)
            if t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC) and not drv.has_data_file:
                if delta:
                    rc.update((le & L2E_OFFSET_MASK) >> cb, 1, delta)
            elif t == ClusterType.COMPRESSED and delta:
                coff, csize = drv.mapping.compressed_range(le)
                first, last = coff >> cb, (coff + csize - 1) >> cb
                rc.update(first, last - first + 1, delta)


def _fix_copied_flags(drv) -> bool:
    """OFLAG_COPIED on the active tree set exactly where the refcount is 1."""
    from .cluster import L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED, ClusterType
    mp, rc, cb = drv.mapping, drv.refcounts, drv.cluster_bits
    l1_changed = False
    for i, e in enumerate(mp.l1):
        l2off = e & L1E_OFFSET_MASK
        if not l2off:
            continue
        want = rc.get(l2off >> cb) == 1
        if bool(e & OFLAG_COPIED) != want:
            mp.l1[i] = (e | OFLAG_COPIED) if want else (e & ~OFLAG_COPIED)
            l1_changed = True
        table = mp.cache.get(l2off)
        dirty = False
        for j, le in mp.entry_slots(table):
            t = drv._ctype(le)
            if t not in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC) or drv.has_data_file:
                continue
            w = rc.get((le & L2E_OFFSET_MASK) >> cb) == 1
            if bool(le & OFLAG_COPIED) != w:
                table[j] = (le | OFLAG_COPIED) if w else (le & ~OFLAG_COPIED)
                dirty = True
        if dirty:
            mp.cache.mark_dirty(l2off)
    return l1_changed


def _clear_copied_flags(drv) -> None:
    from .cluster import L1E_OFFSET_MASK, OFLAG_COPIED, ClusterType
    mp = drv.mapping
    for i, e in enumerate(mp.l1):
        l2off = e & L1E_OFFSET_MASK
        if not l2off:
            continue
        mp.l1[i] = e & ~OFLAG_COPIED
        table = mp.cache.get(l2off)
        dirty = False
        for j, le in mp.entry_slots(table):
            if le & OFLAG_COPIED and drv._ctype(le) in (ClusterType.NORMAL,
                                                         ClusterType.ZERO_ALLOC):
                table[j] = le & ~OFLAG_COPIED
                dirty = True
        if dirty:
            mp.cache.mark_dirty(l2off)


def _write_l1_whole(drv) -> None:
    from .cache import dump_be_array
    mp = drv.mapping
    raw = dump_be_array(mp.l1)
    drv.overlap.check(drv.header.l1_table_offset, len(raw), "l1")
    drv.file.debug_event("l1_update")
    drv.file.write(drv.header.l1_table_offset, raw)
    drv.file.flush()


class SnapshotTableOverlap(BlockError):
    """A rewritten snapshot table would land on the old one (see :func:`_write_table`)."""


def _write_table(drv, snaps: list[Snapshot], checked_free: bool = False) -> str | None:
    """Write a new snapshot table, switch the header to it, free the old one.

    ``checked_free``: an old table whose clusters have no refcount (it lay past the
    end of the file) is not freed; QEMU's qcow2_free_clusters fails and reverts,
    and its message is returned."""
    import struct
    h, cs = drv.header, drv.cluster_size
    raw = encode_snapshots(snaps)
    new_off = 0
    if raw:
        n = -(-len(raw) // cs)
        new_off = drv.refcounts.alloc(n)
        old_off, old_len = h.snapshots_offset, drv.snapshot_table_bytes
        if checked_free and old_len and new_off < old_off + old_len and old_off < new_off + n * cs:
            # QEMU's pre-write overlap check still sees the old table (whose clusters
            # a repair may have found unreferenced): the rewrite fails, and the new
            # clusters stay allocated (flushed before the check; the image is then
            # corrupt, so QEMU's free never reaches the disk): a leak
            drv.refcounts.cache.flush()
            raise SnapshotTableOverlap(errno.EIO, "Input/output error")
        drv.refcounts.cache.flush()
        drv.overlap.add(new_off, len(raw), "snapshot_table")
        drv.file.write(new_off, raw)
        drv.file.flush()
    old_off, old_len = h.snapshots_offset, drv.snapshot_table_bytes
    drv.file.write(60, struct.pack(">IQ", len(snaps), new_off))
    drv.file.flush()
    h.nb_snapshots, h.snapshots_offset = len(snaps), new_off
    drv.snapshots = snaps
    drv.snapshot_table_bytes = len(raw)
    if old_len:
        drv.overlap.remove(old_off, old_len)
        n_old = -(-old_len // cs)
        if checked_free and not all(drv.refcounts.get((old_off >> drv.cluster_bits) + k)
                                    for k in range(n_old)):
            return "qcow2_free_clusters failed: Invalid argument"
        drv.refcounts.free(old_off, n_old)
    return None


def rewrite_table(drv) -> str | None:
    """Write the snapshot table again with complete extra data (QEMU
    qcow2_check_fix_snapshot_table, for ``check -r all``): an entry without a
    disk size gets the image's size, as QEMU's reader fills it in."""
    from dataclasses import replace
    snaps = [replace(s, disk_size=drv.header.size if s.disk_size is None else s.disk_size)
             for s in drv.snapshots]
    return _write_table(drv, snaps, checked_free=True)


def create_snapshot(drv, name: str) -> Snapshot:
    """Internal snapshot of the active image (qemu-img snapshot -c)."""
    import time
    from .cache import dump_be_array
    drv._check_writable()
    drv.mapping.check_usable()
    drv.flush()
    cs = drv.cluster_size
    mp = drv.mapping
    ids = [int(s.id_str) for s in drv.snapshots if s.id_str.isdigit()]
    new_id = str(max(ids, default=0) + 1)
    # 1. the active tree is about to be shared: clear OFLAG_COPIED first.  A crash
    #    after this leaves COPIED clear on clusters with refcount 1, which only costs
    #    an unneeded copy-on-write (the reverse order could let a write land in place
    #    on a cluster the snapshot shares).
    _clear_copied_flags(drv)
    drv.mapping.cache.flush()
    _write_l1_whole(drv)
    # 2. refcounts +1 for everything the snapshot will reference (leaks if we crash)
    _tree_refcounts(drv, mp.l1, +1)
    drv.refcounts.cache.flush()
    # 3. the snapshot's own L1 copy
    l1_bytes = len(mp.l1) * 8
    l1_off = 0
    if l1_bytes:
        l1_off = drv.refcounts.alloc(-(-l1_bytes // cs))
        drv.refcounts.cache.flush()
        drv.overlap.add(l1_off, l1_bytes, "inactive_l1")
        drv.file.write(l1_off, dump_be_array(mp.l1))
        drv.file.flush()
    now = time.time_ns()
    snap = Snapshot(l1_off, len(mp.l1), new_id, name, now // 1_000_000_000,
                    now % 1_000_000_000, 0, 0, drv.header.size, 0)
    # 4. the table, then the header switch (the snapshot exists from here on)
    _write_table(drv, drv.snapshots + [snap])
    drv.overlap.kinds.clear()
    drv._build_overlap_map(drv.snapshot_table_bytes)
    drv.flush()
    return snap


def find_snapshot(drv, ident: str) -> Snapshot:
    for s in drv.snapshots:
        if s.id_str == ident:
            return s
    for s in drv.snapshots:
        if s.name == ident:
            return s
    raise ImageFormatError(f"Can't find the snapshot '{ident}'")


def _read_l1(drv, snap: Snapshot) -> "object":
    from array import array
    from .cache import load_be_array
    validate_snapshot_l1(snap, drv.cluster_size, drv.file.length())
    if not snap.l1_size:
        return array("Q")
    raw = bytearray(snap.l1_size * 8)
    drv.file.read(snap.l1_table_offset, memoryview(raw))
    return load_be_array("Q", raw)


def apply_snapshot(drv, ident: str) -> None:
    """Revert the active image to a snapshot (qemu-img snapshot -a)."""
    from array import array
    drv.mapping.check_usable()
    snap = find_snapshot(drv, ident)
    validate_snapshot_l1(snap, drv.cluster_size, drv.file.length())
    drv._check_writable()
    drv.flush()
    mp = drv.mapping
    sl1 = _read_l1(drv, snap)
    if len(sl1) > len(mp.l1):
        mp.grow_l1(len(sl1), exact=True)
    old_l1 = array("Q", mp.l1)
    _tree_refcounts(drv, sl1, +1)
    drv.refcounts.cache.flush()
    new = array("Q", sl1)
    new.extend(array("Q", bytes(8 * (len(mp.l1) - len(sl1)))))
    mp.l1 = new
    _write_l1_whole(drv)
    # the old tree is unreachable now (L1 switched durably): drop its references, make
    # them durable, then set OFLAG_COPIED where refcounts fell to 1
    _tree_refcounts(drv, old_l1, -1)
    drv.refcounts.cache.flush()
    _after_refcount_drop(drv)
    if snap.disk_size and snap.disk_size != drv.header.size:
        import struct
        drv.file.write(24, struct.pack(">Q", snap.disk_size))
        drv.file.flush()
        drv.header.size = snap.disk_size
    drv.flush()


def _after_refcount_drop(drv) -> None:
    """Forget freed L2 tables, fix OFLAG_COPIED on the active tree, rebuild the
    metadata map (tables moved between "active" and "inactive")."""
    mp = drv.mapping
    for off in list(mp.cache.tables):
        if drv.refcounts.get(off >> drv.cluster_bits) == 0:
            mp.cache.forget(off)
    if _fix_copied_flags(drv):
        pass
    mp.cache.flush()
    _write_l1_whole(drv)
    drv.overlap.kinds.clear()
    drv._build_overlap_map(drv.snapshot_table_bytes)


def delete_snapshot(drv, ident: str) -> None:
    """Delete a snapshot (qemu-img snapshot -d)."""
    drv.mapping.check_usable()
    snap = find_snapshot(drv, ident)
    validate_snapshot_l1(snap, drv.cluster_size, drv.file.length())
    drv._check_writable()
    drv.flush()
    rest = [s for s in drv.snapshots if s is not snap]
    # the table without it first: from then on nothing references its tree
    _write_table(drv, rest)
    sl1 = _read_l1(drv, snap)
    _tree_refcounts(drv, sl1, -1)
    if snap.l1_size:
        nbytes = snap.l1_size * 8
        drv.refcounts.free(snap.l1_table_offset, -(-nbytes // drv.cluster_size), discard=False)
    drv.refcounts.cache.flush()
    _after_refcount_drop(drv)
    drv.flush()
