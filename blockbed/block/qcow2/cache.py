"""Write-back metadata caches with QEMU's ordering dependencies (block/qcow2-cache.c).

Two caches exist per image: L2 tables and refcount blocks.  Both hold tables
in memory, mark them dirty on change and write them back on eviction or
flush.  Crash safety comes from *dependencies*, as in QEMU:

- ``l2.set_dependency(refcounts)`` after allocating clusters: before any dirty
  L2 table is written, every dirty refcount block is written and the file is
  flushed, so an L2 entry never reaches the disk before the refcount of the
  cluster it points to (a crash leaves at most a leak).
- ``refcounts.set_dependency(l2)`` after freeing clusters that L2 entries
  pointed to: the cleared L2 entries become durable before the refcount drop,
  so a freed cluster is never reused while an old entry still points at it.
- ``l2.depends_on_flush()`` after copy-on-write data was written: the data is
  flushed before the L2 entry that makes it visible.

Tables are kept as native-endian ``array`` objects (so lookups are a plain
index) and byte-swapped on load and store; the qcow2 format is big-endian.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from typing import Callable

from ... import trace
from ..driver import BlockDriver

_SWAP = sys.byteorder == "little"


def load_be_array(typecode: str, data: bytes | bytearray | memoryview) -> array:
    """Decode a big-endian table into a native array."""
    a = array(typecode)
    a.frombytes(data)
    if _SWAP and a.itemsize > 1:
        a.byteswap()
    return a


def dump_be_array(a: array) -> bytes:
    """Encode a native array as big-endian bytes."""
    if _SWAP and a.itemsize > 1:
        b = array(a.typecode, a)
        b.byteswap()
        return b.tobytes()
    return a.tobytes()


class MetadataCache:
    """An LRU cache of fixed-size metadata tables keyed by host offset."""

    def __init__(self, file: BlockDriver, name: str, table_bytes: int, capacity: int,
                 load: Callable[[bytes], object], dump: Callable[[object], bytes],
                 write_event: str, load_event: str,
                 check_write: Callable[[int, int], None] | None = None,
                 check_load: Callable[[int], None] | None = None,
                 describe: Callable[[int], dict] | None = None):
        self.file = file
        self.name = name
        self.table_bytes = table_bytes
        self.capacity = max(2, capacity)
        self._load = load
        self._dump = dump
        self.write_event = write_event
        self.load_event = load_event
        self.check_write = check_write
        self.check_load = check_load      # validates a table's offset before it is read
        self.describe = describe          # extra trace fields for a table (L2: its L1 index)
        self.tables: OrderedDict[int, object] = OrderedDict()
        self.dirty: set[int] = set()
        self.depends: MetadataCache | None = None
        self.needs_flush = False
        self.hits = 0
        self.misses = 0
        self.writes = 0

    # --- lookup -----------------------------------------------------------
    def get(self, offset: int) -> object:
        """The table at ``offset``, read from the file on a miss."""
        t = self.tables.get(offset)
        if t is not None:
            self.hits += 1
            self.tables.move_to_end(offset)
            if trace.enabled:
                trace.emit("qcow2.cache_hit", cache=self.name, offset=offset,
                           **(self.describe(offset) if self.describe else {}))
            return t
        if self.check_load is not None:
            self.check_load(offset)
        self.misses += 1
        if trace.enabled:
            trace.emit("qcow2.cache_load", cache=self.name, offset=offset,
                       **(self.describe(offset) if self.describe else {}))
        self._make_room()
        buf = bytearray(self.table_bytes)
        self.file.debug_event(self.load_event)
        self.file.read(offset, memoryview(buf))
        t = self._load(buf)
        self.tables[offset] = t
        return t

    def put_new(self, offset: int, table: object) -> None:
        """Install a freshly built table (no read) and mark it dirty."""
        self._make_room()
        self.tables[offset] = table
        self.tables.move_to_end(offset)
        self.dirty.add(offset)

    def mark_dirty(self, offset: int) -> None:
        self.dirty.add(offset)

    def forget(self, offset: int) -> None:
        """Drop a table whose cluster was freed (its contents no longer matter)."""
        self.tables.pop(offset, None)
        self.dirty.discard(offset)

    def _make_room(self) -> None:
        while len(self.tables) >= self.capacity:
            # evict the least recently used table, clean ones first
            victim = None
            for off in self.tables:
                if off not in self.dirty:
                    victim = off
                    break
            if victim is None:
                victim = next(iter(self.tables))
                self._write_back(victim)
            del self.tables[victim]

    # --- ordering -----------------------------------------------------------
    def set_dependency(self, other: "MetadataCache") -> None:
        """Dirty tables of ``self`` may only be written after ``other`` is flushed."""
        if other.depends is not None:
            other.flush_dependency()
        if self.depends is not None and self.depends is not other:
            self.flush_dependency()
        self.depends = other

    def depends_on_flush(self) -> None:
        self.needs_flush = True

    def flush_dependency(self) -> None:
        dep = self.depends
        if dep is not None:
            dep.flush()
            self.depends = None

    # --- write-back -----------------------------------------------------------
    def _write_back(self, offset: int) -> None:
        if offset not in self.dirty:
            return
        if self.depends is not None:
            self.flush_dependency()
        elif self.needs_flush:
            self.file.flush()
        self.needs_flush = False
        if self.check_write is not None:
            self.check_write(offset, self.table_bytes)
        self.file.debug_event(self.write_event)
        self.file.write(offset, self._dump(self.tables[offset]))
        self.writes += 1
        self.dirty.discard(offset)

    def write_dirty(self) -> None:
        """Write every dirty table (sorted, so writes are sequential), no flush."""
        for off in sorted(self.dirty):
            self._write_back(off)

    def flush(self) -> None:
        """Write every dirty table and flush the file (qcow2_cache_flush)."""
        self.write_dirty()
        self.file.flush()

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.tables),
                "capacity": self.capacity, "dirty": len(self.dirty), "writes": self.writes}
