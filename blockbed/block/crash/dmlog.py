"""Read a dm-log-writes log, the format of QEMU's ``blklogwrites`` driver, into a HostLog.

The crash engine can then sweep a run recorded under ``qemu-system-x86_64``
(QEMU's own controllers and cache modes) with the same states and checks as a
blockbed run.  Format (Linux drivers/md/dm-log-writes.c; QEMU block/blklogwrites.c),
all little-endian, in units of the log's sector size (512 unless set):

- sector 0, the superblock: ``magic u64 = 0x6a736677736872``, ``version u64 = 1``,
  ``nr_entries u64``, ``sectorsize u32``;
- then per entry one header sector, ``sector u64, nr_sectors u64, flags u64,
  data_len u64``, followed by ``nr_sectors`` data sectors unless it is a discard.
  Flags: 1 FLUSH, 2 FUA, 4 DISCARD, 8 MARK.  A write-zeroes is logged as a write
  whose data sectors are zeros.

QEMU appends an entry after the operation on the image completed, so the log is
in completion order, as blockbed's own write log.  One difference: a write that
completed while a flush was in flight is logged before that flush's entry even
if the flush did not cover it; the states built from such a log can only be
*kinder* than reality (some crash states are missed), never stricter, so a
violation found on it is real.

``nr_entries`` in the superblock is updated every ``log-super-update-interval``
entries; :func:`complete_entries` reads entries without trusting it, which is how
a live recording learns how far the log has got.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from .hostlog import HostLog, HostOp, OpKind

MAGIC = 0x6A736677736872
VERSION = 1
FLUSH, FUA, DISCARD, MARK = 1, 2, 4, 8
FLAG_MASK = FLUSH | FUA | DISCARD | MARK
_SUPER = struct.Struct("<QQQI")
_ENTRY = struct.Struct("<QQQQ")
MAX_ENTRY_BYTES = 1 << 30          # no single logged write is larger (QEMU caps requests lower)


class DmLogError(ValueError):
    """The file is not a dm-log-writes log, or an entry is damaged."""


def _super(f: BinaryIO) -> int:
    raw = f.read(_SUPER.size)
    if len(raw) < _SUPER.size:
        raise DmLogError("dm-log-writes log: no superblock")
    magic, version, _, sector = _SUPER.unpack(raw)
    if magic != MAGIC:
        raise DmLogError(f"dm-log-writes log: bad magic 0x{magic:x}")
    if version != VERSION:
        raise DmLogError(f"dm-log-writes log: unsupported version {version}")
    if sector < 512 or sector & (sector - 1) or sector > 1 << 20:
        raise DmLogError(f"dm-log-writes log: bad sector size {sector}")
    return sector


def _entries(f: BinaryIO, sector: int, file_size: int, load: bool, strict: bool):
    """Yield (flags, offset, length, data) per complete entry, in log order.

    An all-zero header (not written yet: the log is live or was cut) ends the log;
    with ``strict`` a damaged entry raises, otherwise it ends the log too."""
    pos = sector
    while pos + _ENTRY.size <= file_size:
        f.seek(pos)
        hdr = f.read(_ENTRY.size)
        first, count, flags, data_len = _ENTRY.unpack(hdr)
        if not (first or count or flags):
            return
        if flags & ~FLAG_MASK:
            if strict:
                raise DmLogError(f"dm-log-writes log: entry at byte {pos}: bad flags 0x{flags:x}")
            return
        length = count * sector
        if length > MAX_ENTRY_BYTES:
            if strict:
                raise DmLogError(f"dm-log-writes log: entry at byte {pos}: {length} bytes")
            return
        data_at = pos + sector
        has_data = not flags & (DISCARD | FLUSH | MARK) and count
        if flags & MARK:                          # the mark's name follows in whole sectors
            end = data_at + -(-min(data_len, MAX_ENTRY_BYTES) // sector) * sector
        else:
            end = data_at + (length if has_data else 0)
        if end > file_size:
            if strict:
                raise DmLogError(f"dm-log-writes log: entry at byte {pos} runs past the end")
            return
        data = None
        if has_data and load:
            f.seek(data_at)
            data = f.read(length)
        yield flags, first * sector, length, data
        pos = end


def complete_entries(path: str) -> int:
    """How many entries the (possibly still growing) log holds completely now."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            sector = _super(f)
            return sum(1 for _ in _entries(f, sector, size, load=False, strict=False))
    except (OSError, DmLogError):
        return 0


def read_dm_log(path: str) -> HostLog:
    """The whole log as a HostLog (writes with their data; zero-writes carry zeros)."""
    log = HostLog()
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        sector = _super(f)
        for flags, offset, length, data in _entries(f, sector, size, load=True, strict=True):
            if flags & FLUSH:
                log.append(HostOp(OpKind.FLUSH))
            elif flags & MARK:
                log.append(HostOp(OpKind.MARK))
            elif flags & DISCARD:
                log.append(HostOp(OpKind.DISCARD, offset, length))
            elif length:
                log.append(HostOp(OpKind.WRITE, offset, length, data, bool(flags & FUA)))
    return log
