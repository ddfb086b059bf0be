"""``logwrites`` filter: an append-only log of every completed write, with data.

The crash-consistency engine's view of the host: modelled on Linux
dm-log-writes (Documentation/admin-guide/device-mapper/log-writes.rst) and
used like QEMU's ``blklogwrites`` driver, placed between the format driver
and the file.

Ordering (dm-log-writes): an entry is appended when its operation
*completes*, so

- a write completed before a flush precedes the flush entry;
- a FUA write is logged at its completion, flagged FUA;
- a flush is logged after the flush below it returned: everything before a
  FLUSH entry was durable when the flush completed.

Failed operations are not logged (their effect on the medium is unknown;
the request log in the BlockBackend records the failure).  ``mark(name)``
appends a named MARK entry (the crash engine marks workload phases).

On-disk format (little-endian), version 1
-----------------------------------------
File header, 32 bytes (:data:`LOG_HEADER`)::

    0  magic        8s  b"BBLOGWR\\0"
    8  version      u32 1
    12 header_size  u32 32
    16 sector_size  u32 512 (informational: crash states tear at this unit)
    20 flags        u32 0
    24 reserved     u64 0

then entries back to back, each a 48-byte header followed by ``data_len``
bytes of payload::

    0  magic     u32 0x52544e45 (b"ENTR")
    4  kind      u8  1 write, 2 discard, 3 write_zeroes, 4 flush, 5 mark
    5  flags     u8  bit 0 FUA, bit 1 MAY_UNMAP
    6  reserved  u16 0
    8  seq       u64 1, 2, 3 … in log order
    16 offset    u64 byte offset on the node below (0 for flush/mark)
    24 length    u64 bytes affected (0 for flush/mark)
    32 data_len  u64 payload bytes: = length for write, name bytes for mark, else 0
    40 crc32     u32 zlib CRC-32 of the header (this field zero) then the payload
    44 reserved  u32 0

A torn tail (crash while logging) is detected by the reader and reported as
``truncated``; entries before it are intact (each carries its own CRC).
"""

from __future__ import annotations

import enum
import errno
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

import construct as cs

from .. import trace
from .driver import BlockDriver, BlockError, Buffer, Extent

MAGIC = b"BBLOGWR\0"
VERSION = 1
ENTRY_MAGIC = 0x52544E45

LOG_HEADER = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int32ul,
    "header_size" / cs.Int32ul,
    "sector_size" / cs.Int32ul,
    "flags" / cs.Int32ul,
    "reserved" / cs.Int64ul,
)
LOG_HEADER_SIZE = LOG_HEADER.sizeof()

# Entry header: precompiled struct for the hot path (every logged write).
ENTRY = struct.Struct("<IBBHQQQQII")
assert ENTRY.size == 48


class Kind(enum.IntEnum):
    WRITE = 1
    DISCARD = 2
    WRITE_ZEROES = 3
    FLUSH = 4
    MARK = 5


FLAG_FUA = 0x01
FLAG_MAY_UNMAP = 0x02


class LogFormatError(ValueError):
    """The log file is not a blockbed log-writes file or is corrupt."""


@dataclass(frozen=True)
class LogEntry:
    seq: int
    kind: Kind
    offset: int
    length: int
    flags: int
    data: bytes | None       # write payload (None when not loaded)
    name: str | None = None  # mark name
    data_offset: int = 0     # where the payload sits in the log file

    @property
    def fua(self) -> bool:
        return bool(self.flags & FLAG_FUA)

    @property
    def may_unmap(self) -> bool:
        return bool(self.flags & FLAG_MAY_UNMAP)


class LogWriter:
    """Appends entries to a log file (created or truncated)."""

    def __init__(self, path: str, sector_size: int = 512):
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                              | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise BlockError(e.errno, f"Could not create write log '{path}': {e.strerror}") from None
        self.seq = 0
        self._write_all([LOG_HEADER.build(dict(version=VERSION, header_size=LOG_HEADER_SIZE,
                                               sector_size=sector_size, flags=0, reserved=0))])

    def _write_all(self, parts: Sequence[Buffer]) -> None:
        views = [memoryview(p) for p in parts]
        while views:
            n = os.writev(self.fd, views[:1024])
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def append(self, kind: Kind, offset: int = 0, length: int = 0, flags: int = 0,
               payload: Sequence[Buffer] = ()) -> int:
        self.seq += 1
        data_len = sum(len(p) for p in payload)
        hdr = ENTRY.pack(ENTRY_MAGIC, kind, flags, 0, self.seq, offset, length, data_len, 0, 0)
        crc = zlib.crc32(hdr)
        for p in payload:
            crc = zlib.crc32(p, crc)
        hdr = ENTRY.pack(ENTRY_MAGIC, kind, flags, 0, self.seq, offset, length, data_len, crc, 0)
        try:
            self._write_all([hdr, *payload])
        except OSError as e:
            raise BlockError(e.errno or errno.EIO,
                             f"write log '{self.path}': append failed: {e.strerror}") from None
        return self.seq

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LogWritesDriver(BlockDriver):
    """The filter: passes everything to ``file`` and logs what completed."""

    driver_name = "logwrites"

    def __init__(self, file: BlockDriver, log_path: str, sector_size: int = 512):
        self.file = file
        self.read_only = file.read_only
        # A FUA write is logged as FUA (a durability point of the crash engine) and
        # passed down as one: the file node performs it natively or as write +
        # fdatasync (QEMU 7.2's default), so the log never shows an emulation's flush.
        self.supports_fua = True
        self.log = LogWriter(log_path, sector_size)

    def children(self) -> Sequence[BlockDriver]:
        return (self.file,)

    def mark(self, name: str) -> int:
        """Append a MARK entry; returns its sequence number."""
        data = name.encode("utf-8")
        if trace.enabled:
            trace.emit("logwrites.mark", name=name)
        return self.log.append(Kind.MARK, 0, 0, 0, [data])

    def read(self, offset: int, buf: memoryview) -> None:
        self.file.read(offset, buf)

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self.file.readv(offset, bufs)

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        self.writev(offset, [data], fua)

    def writev(self, offset: int, bufs: Sequence[Buffer], fua: bool = False) -> None:
        self.file.writev(offset, bufs, fua)
        n = sum(len(b) for b in bufs)
        self.log.append(Kind.WRITE, offset, n, FLAG_FUA if fua else 0, bufs)

    def flush(self) -> None:
        self.file.flush()
        self.log.append(Kind.FLUSH)

    def discard(self, offset: int, length: int) -> None:
        self.file.discard(offset, length)
        self.log.append(Kind.DISCARD, offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        self.file.write_zeroes(offset, length, may_unmap)
        self.log.append(Kind.WRITE_ZEROES, offset, length, FLAG_MAY_UNMAP if may_unmap else 0)

    def block_status(self, offset: int, length: int) -> list[Extent]:
        return self.file.block_status(offset, length)

    def length(self) -> int:
        return self.file.length()

    def truncate(self, length: int) -> None:
        self.file.truncate(length)

    def close(self) -> None:
        self.log.close()
        self.file.close()


class LogReader:
    """Iterate the entries of a log file.

    ``load_data=False`` leaves ``LogEntry.data`` None (read it with
    :meth:`read_data`), for logs too big to hold in memory.  After iteration
    ``truncated`` tells whether the file ended inside an entry (a torn tail);
    any other damage raises :class:`LogFormatError` naming the entry.
    """

    def __init__(self, path: str, load_data: bool = True):
        self.path = path
        self.load_data = load_data
        try:
            self._fh: BinaryIO = open(path, "rb")
        except OSError as e:
            raise LogFormatError(f"{path}: {e.strerror}") from None
        raw = self._fh.read(LOG_HEADER_SIZE)
        try:
            self.header = LOG_HEADER.parse(raw)
        except cs.ConstructError:
            self._fh.close()
            raise LogFormatError(f"{path}: not a blockbed write log (bad magic or short header)") \
                from None
        if self.header.version != VERSION:
            self._fh.close()
            raise LogFormatError(f"{path}: unsupported log version {self.header.version}")
        self.truncated = False

    def __iter__(self) -> Iterator[LogEntry]:
        fh = self._fh
        fh.seek(self.header.header_size)
        expect = 1
        while True:
            pos = fh.tell()
            hdr = fh.read(ENTRY.size)
            if not hdr:
                return
            if len(hdr) < ENTRY.size:
                self.truncated = True
                return
            magic, kind, flags, _r, seq, offset, length, data_len, crc, _r2 = ENTRY.unpack(hdr)
            if magic != ENTRY_MAGIC:
                raise LogFormatError(f"{self.path}: bad entry magic at byte {pos}")
            try:
                kind = Kind(kind)
            except ValueError:
                raise LogFormatError(f"{self.path}: entry {seq}: unknown kind {kind}") from None
            if seq != expect:
                raise LogFormatError(f"{self.path}: entry at byte {pos} has seq {seq}, "
                                     f"expected {expect}")
            data_pos = pos + ENTRY.size
            payload = fh.read(data_len)
            if len(payload) < data_len:
                self.truncated = True
                return
            check = zlib.crc32(ENTRY.pack(magic, kind, flags, 0, seq, offset, length, data_len,
                                          0, 0))
            if zlib.crc32(payload, check) != crc:
                raise LogFormatError(f"{self.path}: entry {seq}: CRC mismatch")
            name = payload.decode("utf-8", "replace") if kind is Kind.MARK else None
            data = payload if kind is Kind.WRITE and self.load_data else None
            expect += 1
            yield LogEntry(seq, kind, offset, length, flags, data, name, data_pos)

    def read_data(self, entry: LogEntry) -> bytes:
        self._fh.seek(entry.data_offset)
        return self._fh.read(entry.length)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "LogReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(path: str) -> list[LogEntry]:
    """All entries of a log (with data)."""
    with LogReader(path) as r:
        return list(r)


def replay(entries: Sequence[LogEntry], target: BlockDriver, until_seq: int | None = None) -> int:
    """Apply writes/discards/write-zeroes (through ``until_seq``) to ``target``.

    Discards replay as write-zeroes, so the result is deterministic.  Returns
    the number of entries applied.
    """
    applied = 0
    for e in entries:
        if until_seq is not None and e.seq > until_seq:
            break
        if e.kind is Kind.WRITE:
            if e.data is None:
                raise ValueError("replay needs entries loaded with data")
            target.write(e.offset, memoryview(e.data))
        elif e.kind in (Kind.DISCARD, Kind.WRITE_ZEROES):
            target.write_zeroes(e.offset, e.length, may_unmap=False)
        applied += 1
    return applied
