"""The internal snapshot table (spec "Snapshots").

blockbed reads the table so that ``check`` counts the references of snapshot
L1/L2 tables, ``info`` lists snapshots, and writes copy-on-write clusters the
snapshots share (clusters without OFLAG_COPIED).  Creating or applying
internal snapshots is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import Int16ub, Int32ub, Int64ub, Struct

from ..driver import BlockDriver, ImageFormatError

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


def read_snapshots(file: BlockDriver, offset: int, count: int, cluster_size: int,
                   file_length: int) -> tuple[list[Snapshot], int]:
    """Parse ``count`` entries at ``offset``; returns the snapshots and the table's byte size."""
    if count == 0:
        return [], 0
    if offset % cluster_size:
        raise ImageFormatError("Snapshot table is not cluster aligned")
    out: list[Snapshot] = []
    pos = offset
    for i in range(count):
        if pos + _HDR > file_length or pos - offset > MAX_SNAPSHOT_TABLE:
            raise ImageFormatError(f"Snapshot table entry {i} is past the end of the image file")
        raw = bytearray(_HDR)
        file.read(pos, memoryview(raw))
        h = SnapshotEntryHeader.parse(raw)
        pos += _HDR
        extra_len = h.extra_data_size
        if extra_len > 1024:
            raise ImageFormatError(f"Too much extra metadata in snapshot table entry {i}")
        total = extra_len + h.id_str_size + h.name_size
        if pos + total > file_length:
            raise ImageFormatError(f"Snapshot table entry {i} is past the end of the image file")
        body = bytearray(total)
        if total:
            file.read(pos, memoryview(body))
        pos += total
        pos = (pos + 7) & ~7
        extra = bytes(body[:extra_len])
        disk_size = icount = None
        if len(extra) >= 16:
            disk_size = int.from_bytes(extra[8:16], "big")
        if len(extra) >= 24:
            icount = int.from_bytes(extra[16:24], "big")
        if h.l1_size > (32 << 20) // 8:
            raise ImageFormatError(f"Snapshot L1 table of entry {i} is too large")
        if h.l1_table_offset % cluster_size:
            raise ImageFormatError(f"Snapshot L1 table offset of entry {i} is not cluster aligned")
        id_str = bytes(body[extra_len:extra_len + h.id_str_size]).decode("utf-8", "replace")
        name = bytes(body[extra_len + h.id_str_size:total]).decode("utf-8", "replace")
        out.append(Snapshot(h.l1_table_offset, h.l1_size, id_str, name, h.date_sec, h.date_nsec,
                            h.vm_clock_nsec, h.vm_state_size, disk_size, icount))
    return out, pos - offset
