"""The snapshot-table part of ``check`` (QEMU qcow2_check_read_snapshot_table and
qcow2_check_fix_snapshot_table): the table pointer and entries are judged before
the refcount check, the table is rewritten after it."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..driver import BlockError
from .header import INCOMPAT_CORRUPT, MAX_SNAPSHOTS

if TYPE_CHECKING:
    from .check import CheckResult
    from .driver import Qcow2Driver


def snapshot_table_unusable(drv: "Qcow2Driver", res: "CheckResult", fix: bool) -> bool | int:
    """QEMU qcow2_check_read_snapshot_table (the open in check mode does not read the
    table): a bad table pointer or an unreadable table ends the check (True); with
    ``fix`` (-r all) overhanging snapshots are discarded at once and too much extra
    data is cut — the number of entries cut is returned, for the table rewrite."""
    h = drv.header
    if not h.nb_snapshots:
        return False
    if fix and h.nb_snapshots > MAX_SNAPSHOTS:
        res.messages.append(f"Discarding {h.nb_snapshots - MAX_SNAPSHOTS} overhanging "
                            "snapshots")
        _set_snapshot_count(drv, res, MAX_SNAPSHOTS, h.nb_snapshots - MAX_SNAPSHOTS)
    if h.snapshots_offset % drv.cluster_size or h.nb_snapshots > MAX_SNAPSHOTS:
        what = "offset invalid" if h.snapshots_offset % drv.cluster_size else "too large"
        res.messages.append(f"qemu-img: ERROR snapshot table {what}")
        res.failed = "Invalid argument"
    elif drv.snapshot_error and fix:
        from .snapshot import TableRepair, read_snapshots
        rep = TableRepair()
        drv.snapshots, drv.snapshot_table_bytes = read_snapshots(
            drv.file, h.snapshots_offset, h.nb_snapshots, drv.cluster_size,
            drv.file.length(), rep)
        drv.snapshot_error = None
        res.messages.extend(rep.notes)
        if rep.reduced:
            _set_snapshot_count(drv, res, len(drv.snapshots), rep.reduced)
        return rep.extra_dropped
    elif drv.snapshot_error:
        res.messages.append(f"qemu-img: ERROR failed to read the snapshot table: "
                            f"{drv.snapshot_error}")
        res.failed = "File too large" if "too much" in drv.snapshot_error.lower() or \
            "too large" in drv.snapshot_error else "Invalid argument"
    else:
        return False
    res.check_errors += 1
    return True


def _set_snapshot_count(drv: "Qcow2Driver", res: "CheckResult", n: int, dropped: int) -> None:
    """Cut the header's snapshot count at once, before the refcount check (the
    snapshots' clusters become leaks it repairs)."""
    drv.file.write(60, struct.pack(">I", n))
    drv.file.flush()
    drv.header.nb_snapshots = n
    del drv.snapshots[n:]
    res.corruptions_fixed += dropped


def incomplete_snapshots(drv: "Qcow2Driver", res: "CheckResult", fix: bool) -> int:
    """QEMU qcow2_check_read_snapshot_table (run before the refcount check): in a v3
    image every snapshot entry needs at least 16 bytes of extra data (the large VM
    state size and the disk size); returns how many entries lack them."""
    if drv.header.version < 3:
        return 0
    bad = [i for i, sn in enumerate(drv.snapshots) if sn.disk_size is None]
    for i in bad:
        res.messages.append(f"{'Repairing' if fix else 'ERROR'} snapshot table entry {i} "
                            "is incomplete")
    return len(bad)


def fix_snapshot_table(drv: "Qcow2Driver", res: "CheckResult", incomplete: int,
                       fix: bool) -> bool:
    """QEMU qcow2_check_fix_snapshot_table, after the refcount check: with ``fix``
    (-r all) the table is written again when entries were incomplete or cut, else
    they count as corruptions.  True when the rewrite failed (the check ends)."""
    if incomplete and fix:
        from .snapshot import SnapshotTableOverlap, rewrite_table
        try:
            why = rewrite_table(drv)
        except BlockError as e:
            if isinstance(e, SnapshotTableOverlap):
                res.messages.append("qcow2: Marking image as corrupt: Preventing invalid write "
                                    "on metadata (overlaps with snapshot table); further "
                                    "corruption events will be suppressed")
                drv.header.incompatible_features |= INCOMPAT_CORRUPT
                drv._write_features()
                drv.corrupt = True
            res.messages.append(f"ERROR failed to update snapshot table: {e.strerror or e}")
            res.check_errors += 1
            res.corruptions += incomplete
            res.failed = e.strerror or str(e)
            return True
        else:
            if why:
                res.messages.append(why)
            res.corruptions_fixed += incomplete
    else:
        res.corruptions += incomplete
    return False
