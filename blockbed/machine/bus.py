"""Port-I/O and MMIO dispatch.

Devices register *regions*: an address range and a handler with
``read(offset, size) -> int`` and ``write(offset, size, value)``, where
``offset`` is relative to the region's start.  An access that hits no region
reads all-ones and drops writes, as a PC's bus does (master abort).

Port I/O: a dict from port number to (handler, base) — one lookup per exit.
The CPU's hooks look up ``hook_ports``, the same but with a handler that also
offers ``read_string``/``write_string`` wrapped by ``wrap_strings`` (set by the
CPU: machine/pio_string.py), so that only such ports pay for the ``rep
ins``/``rep outs`` check; ``read``/``write`` here (qtest) reach the handler
itself.

MMIO: the unicorn address space above RAM up to 4 GiB is rebuilt from page
chunks whenever a region moves (a BAR is reprogrammed): a region that covers
whole pages gets its own unicorn mapping whose callback calls the handler
directly; the gaps get an all-ones chunk; pages shared by several small
regions get a chunk that dispatches by offset.  So the common access costs one
unicorn callback and one handler call, with no search.  A region that would
overlap RAM or another region is not decoded, and the conflict is recorded in
``conflicts`` for the run report.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Protocol

from .. import trace

PAGE = 4096
ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}
FOUR_GIB = 1 << 32


class RegionHandler(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(eq=False)
class Region:
    name: str
    base: int
    size: int
    handler: RegionHandler

    @property
    def end(self) -> int:
        return self.base + self.size


class _Nothing:
    """What answers where nothing decodes: all-ones, writes dropped."""

    def read(self, offset: int, size: int) -> int:
        return ONES[size]

    def write(self, offset: int, size: int, value: int) -> None:
        pass


NOTHING = _Nothing()


class IoPortBus:
    """The 64 KiB x86 I/O port space."""

    def __init__(self) -> None:
        self.ports: dict[int, tuple[RegionHandler, int]] = {}
        self.hook_ports: dict[int, tuple[RegionHandler, int]] = {}
        self.wrap_strings: Callable[[RegionHandler, int], RegionHandler] | None = None
        self.regions: list[Region] = []
        self.conflicts: list[str] = []

    def add(self, name: str, base: int, size: int, handler: RegionHandler) -> Region | None:
        if base < 0 or base + size > 0x10000:
            self.conflicts.append(f"{name}: I/O range {base:#x}+{size:#x} outside the port space")
            return None
        for p in range(base, base + size):
            if p in self.ports:
                other = next(r.name for r in self.regions if r.base <= p < r.end)
                self.conflicts.append(f"{name}: I/O range {base:#x}+{size:#x} overlaps {other}; not decoded")
                if trace.enabled:
                    trace.emit("pio.conflict", name=name, base=base, size=size, other=other)
                return None
        region = Region(name, base, size, handler)
        self.regions.append(region)
        hooked = handler
        if self.wrap_strings is not None and \
                (hasattr(handler, "read_string") or hasattr(handler, "write_string")):
            hooked = self.wrap_strings(handler, base)
        for p in range(base, base + size):
            self.ports[p] = (handler, base)
            self.hook_ports[p] = (hooked, base)
        return region

    def remove(self, region: Region) -> None:
        if region in self.regions:
            self.regions.remove(region)
            for p in range(region.base, region.end):
                self.ports.pop(p, None)
                self.hook_ports.pop(p, None)

    def read(self, port: int, size: int) -> int:
        ent = self.ports.get(port)
        if ent is None:
            return ONES[size]
        return ent[0].read(port - ent[1], size)

    def write(self, port: int, size: int, value: int) -> None:
        ent = self.ports.get(port)
        if ent is not None:
            ent[0].write(port - ent[1], size, value)


class _PageDispatch:
    """A chunk shared by several sub-page regions: find the region by offset."""

    def __init__(self, chunk_base: int, regions: list[Region]):
        self.chunk_base = chunk_base
        self.regions = sorted(regions, key=lambda r: r.base)
        self.starts = [r.base for r in self.regions]

    def _find(self, addr: int) -> Region | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.regions[i].end:
            return self.regions[i]
        return None

    def read(self, offset: int, size: int) -> int:
        addr = self.chunk_base + offset
        r = self._find(addr)
        return ONES[size] if r is None else r.handler.read(addr - r.base, size)

    def write(self, offset: int, size: int, value: int) -> None:
        addr = self.chunk_base + offset
        r = self._find(addr)
        if r is not None:
            r.handler.write(addr - r.base, size, value)


class _Shifted:
    """A chunk that covers part of one region: add the chunk's offset in it."""

    __slots__ = ("handler", "delta")

    def __init__(self, handler: RegionHandler, delta: int):
        self.handler = handler
        self.delta = delta

    def read(self, offset: int, size: int) -> int:
        return self.handler.read(offset + self.delta, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.handler.write(offset + self.delta, size, value)


#: gaps are mapped in pieces that do not cross a multiple of this (see _gap)
GAP_GRID = 64 << 20


def _gap(out: list, start: int, end: int) -> None:
    """The all-ones chunks of ``[start, end)``, cut at every multiple of GAP_GRID.

    Unicorn's ``mem_unmap`` costs time in proportion to the size it unmaps (it
    walks the range page by page: measured 39 ms per GiB with nothing translated,
    twice that in a running machine), and a region added inside a gap unmaps the
    gap chunk around it.  One chunk for the whole window made every machine pay
    about 70 ms per device added (136 of the 139 ms a machine took to build); a
    64 MiB grid bounds that at a few ms for some 60 mappings.
    """
    while start < end:
        stop = min(end, (start // GAP_GRID + 1) * GAP_GRID)
        out.append((start, stop - start, NOTHING))
        start = stop


class MmioBus:
    """Memory-mapped I/O above RAM.

    ``window_start`` (the end of RAM) to 4 GiB is always fully mapped, so any
    access there lands in a handler (or in the all-ones chunk).  Regions above
    4 GiB (64-bit BARs placed high) are mapped alone.
    """

    def __init__(self, window_start: int, wrap: Callable[[RegionHandler], tuple] | None = None):
        self.window_start = window_start
        self.regions: list[Region] = []
        self.conflicts: list[str] = []
        self._uc = None
        self._mapped: dict[tuple, tuple[int, int]] = {}   # chunk key -> (base, size)
        self.remaps = 0             # rebuilds that changed the mapping (see CPU.run_slice)
        # wrap(handler) -> (read_cb, write_cb): the CPU supplies callbacks that
        # count exits and advance virtual time around the handler call.
        self._wrap = wrap or (lambda h: (lambda uc, off, size, ud: h.read(off, size),
                                         lambda uc, off, size, val, ud: h.write(off, size, val)))

    def attach(self, uc, wrap: Callable[[RegionHandler], tuple],
               map_chunk: Callable[[int, int, Callable, Callable], None] | None = None) -> None:
        """Map the window into ``uc``.  ``wrap(handler)`` gives a chunk's (read,
        write) callbacks; ``map_chunk(base, size, read, write)`` maps them (the
        CPU's maps them without the binding's wrappers; by default ``uc.mmio_map``)."""
        self._uc = uc
        self._wrap = wrap
        self._map_chunk = map_chunk or (lambda b, n, rd, wr: uc.mmio_map(b, n, rd, None, wr, None))
        self._rebuild()

    def add(self, name: str, base: int, size: int, handler: RegionHandler) -> Region | None:
        """Decode ``[base, base+size)`` to ``handler``; None (and a conflict) if it cannot."""
        why = None
        if size <= 0:
            why = "empty region"
        elif base < self.window_start:
            why = f"overlaps guest RAM (RAM ends at {self.window_start:#x})"
        elif base < FOUR_GIB < base + size:
            why = "crosses the 4 GiB boundary"
        else:
            for r in self.regions:
                if base < r.end and r.base < base + size:
                    why = f"overlaps {r.name} at {r.base:#x}+{r.size:#x}"
                    break
        if why:
            msg = f"{name} at {base:#x}+{size:#x} {why}; not decoded"
            self.conflicts.append(msg)
            if trace.enabled:
                trace.emit("mmio.conflict", name=name, base=base, size=size, why=why)
            return None
        region = Region(name, base, size, handler)
        self.regions.append(region)
        self._rebuild()
        return region

    def remove(self, region: Region) -> None:
        if region in self.regions:
            self.regions.remove(region)
            self._rebuild()

    def find(self, addr: int) -> Region | None:
        for r in self.regions:
            if r.base <= addr < r.end:
                return r
        return None

    def read(self, addr: int, size: int) -> int:
        r = self.find(addr)
        return ONES[size] if r is None else r.handler.read(addr - r.base, size)

    def write(self, addr: int, size: int, value: int) -> None:
        r = self.find(addr)
        if r is not None:
            r.handler.write(addr - r.base, size, value)

    # --- unicorn mapping ---------------------------------------------------
    def _chunks(self) -> list[tuple[int, int, RegionHandler]]:
        """Page-aligned chunks covering the window plus high regions."""
        pages: dict[int, list[Region]] = {}
        for r in self.regions:
            first = r.base & ~(PAGE - 1)
            last = (r.end - 1) & ~(PAGE - 1)
            for p in range(first, last + PAGE, PAGE):
                pages.setdefault(p, []).append(r)
        chunks: list[tuple[int, int, RegionHandler]] = []
        # Whole-page runs owned by one region become one direct chunk.
        for r in sorted(self.regions, key=lambda r: r.base):
            first = (r.base + PAGE - 1) & ~(PAGE - 1)
            last = r.end & ~(PAGE - 1)
            p = first
            while p < last:
                if pages.get(p) == [r] and r.base <= p and p + PAGE <= r.end:
                    q = p
                    while q < last and pages.get(q) == [r]:
                        q += PAGE
                    handler = r.handler if p == r.base else _Shifted(r.handler, p - r.base)
                    chunks.append((p, q - p, handler))
                    for x in range(p, q, PAGE):
                        pages.pop(x, None)
                    p = q
                else:
                    p += PAGE
        # Pages left are shared or partial: dispatch by offset.
        for p, regs in pages.items():
            chunks.append((p, PAGE, _PageDispatch(p, regs)))
        chunks.sort()
        # Fill the gaps of the window with the all-ones chunk.
        out: list[tuple[int, int, RegionHandler]] = []
        cursor = self.window_start
        for base, size, h in chunks:
            if base >= FOUR_GIB:
                out.append((base, size, h))
                continue
            if base > cursor:
                _gap(out, cursor, base)
            out.append((base, size, h))
            cursor = base + size
        if cursor < FOUR_GIB:
            _gap(out, cursor, FOUR_GIB)
        return out

    @staticmethod
    def _chunk_key(base: int, size: int, handler: RegionHandler) -> tuple:
        """What makes two chunks the same mapping: place, size and the handler
        (by identity; the two adapter kinds by what they adapt)."""
        if isinstance(handler, _Shifted):
            what: tuple = ("shifted", id(handler.handler), handler.delta)
        elif isinstance(handler, _PageDispatch):
            what = ("page", tuple(id(r) for r in handler.regions))
        else:
            what = ("direct", id(handler))
        return base, size, what

    def _rebuild(self) -> None:
        """Bring unicorn's MMIO mappings to the current regions, touching only the
        chunks that changed: ``mem_unmap`` costs time in proportion to the size it
        unmaps (see :func:`_gap`), and Linux changes one BAR at a time, so most chunks
        stay as they are."""
        uc = self._uc
        if uc is None:
            return
        wanted = {self._chunk_key(b, n, h): (b, n, h) for b, n, h in self._chunks()}
        kept: dict[tuple, tuple[int, int]] = {}
        for key, (base, size) in self._mapped.items():
            if key in wanted:
                kept[key] = (base, size)
            else:
                uc.mem_unmap(base, size)
        for key, (base, size, handler) in sorted(wanted.items(), key=lambda kv: kv[1][0]):
            if key not in kept:
                rd, wr = self._wrap(handler)
                self._map_chunk(base, size, rd, wr)
                kept[key] = (base, size)
        if kept.keys() != self._mapped.keys():
            self.remaps += 1
        self._mapped = kept
        if trace.enabled:
            trace.emit("mmio.remap", chunks=len(self._mapped))
