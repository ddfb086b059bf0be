"""An in-memory dirty bitmap: one bit per ``granularity`` bytes of the disk.

The bits live in a ``bytearray`` in exactly the order the qcow2 spec stores
bitmap data ("Bitmap table": bit ``i`` of the bitmap is bit ``i % 8`` of byte
``i // 8``, least significant bit first), so storing and loading a bitmap
cluster is a slice copy.  Every operation works on byte ranges (slice
assignment, regex scans, big-int OR): nothing loops over single bits of a
large range in Python.
"""

from __future__ import annotations

import re
from typing import Iterator

_NONZERO_RUN = re.compile(rb"[^\x00]+")
_FULL_RUN_OR_BYTE = re.compile(rb"\xff+|[^\xff]")


class DirtyBitmap:
    """Dirty bits for a disk of ``size`` bytes at ``granularity`` (a power of two)."""

    def __init__(self, size: int, granularity: int):
        if granularity <= 0 or granularity & (granularity - 1):
            raise ValueError(f"granularity {granularity} is not a power of two")
        self.granularity = granularity
        self.gbits = granularity.bit_length() - 1
        self.size = 0
        self.nbits = 0
        self.data = bytearray()
        self.resize(size)

    # --- changes -------------------------------------------------------------------
    def set_range(self, offset: int, length: int) -> None:
        """Mark every granule that ``[offset, offset+length)`` touches (QEMU hbitmap_set)."""
        if length <= 0 or offset >= self.size:
            return
        end = min(offset + length, self.size)
        self.set_bits(max(offset, 0) >> self.gbits, ((end - 1) >> self.gbits) + 1)

    def set_bits(self, a: int, b: int) -> None:
        """Set bits ``[a, b)``."""
        b = min(b, self.nbits)
        if a >= b:
            return
        data = self.data
        lo, hi = a >> 3, b >> 3
        if lo == hi:
            data[lo] |= ((1 << (b - a)) - 1) << (a & 7)
            return
        if a & 7:
            data[lo] |= (0xFF << (a & 7)) & 0xFF
            lo += 1
        if hi > lo:
            data[lo:hi] = b"\xff" * (hi - lo)
        if b & 7:
            data[hi] |= (1 << (b & 7)) - 1

    def clear(self) -> None:
        self.data[:] = bytes(len(self.data))

    def resize(self, size: int) -> None:
        """Grow or shrink to cover ``size`` bytes; new granules are clean (as QEMU's
        bdrv_dirty_bitmap_truncate: growing a disk does not dirty the new area)."""
        nbits = -(-size >> self.gbits)
        nbytes = (nbits + 7) >> 3
        if nbytes > len(self.data):
            self.data += bytes(nbytes - len(self.data))
        else:
            del self.data[nbytes:]
        self.size, self.nbits = size, nbits
        self._mask_tail()

    def _mask_tail(self) -> None:
        """Bits past the end stay zero (what QEMU serialises there)."""
        if self.nbits & 7 and self.data:
            self.data[-1] &= (1 << (self.nbits & 7)) - 1

    def merge(self, other: "DirtyBitmap") -> None:
        """OR ``other`` in; with another granularity every dirty byte range of
        ``other`` is set here (QEMU hbitmap_merge of unequal granularities)."""
        if other.granularity == self.granularity and other.nbits == self.nbits:
            n = len(self.data)
            v = int.from_bytes(self.data, "little") | int.from_bytes(other.data, "little")
            self.data[:] = v.to_bytes(n, "little")
            return
        for off, ln in other.extents():
            self.set_range(off, ln)

    # --- serialised chunks (one bitmap data cluster each) ----------------------------
    def chunk(self, index: int, chunk_bytes: int) -> bytes:
        """The bytes of bitmap data cluster ``index``, zero-padded to ``chunk_bytes``."""
        raw = bytes(self.data[index * chunk_bytes:(index + 1) * chunk_bytes])
        return raw + bytes(chunk_bytes - len(raw))

    def chunk_state(self, index: int, chunk_bytes: int) -> int:
        """0: every bit of the chunk is clean, 1: every bit (within the disk) is dirty,
        2: mixed.  Decides the spec's table entry encoding."""
        start = index * chunk_bytes
        raw = self.data[start:start + chunk_bytes]
        if raw.count(0) == len(raw):
            return 0
        bits = min(chunk_bytes * 8, self.nbits - start * 8)
        full, rest = bits >> 3, bits & 7
        if raw.count(0xFF, 0, full) == full and (not rest or raw[full] == (1 << rest) - 1):
            return 1
        return 2

    def load_chunk(self, index: int, chunk_bytes: int, raw: bytes | None) -> None:
        """Install chunk ``index`` from disk; ``raw`` None means all ones."""
        start = index * chunk_bytes
        if raw is None:
            self.set_bits(start * 8, (start + chunk_bytes) * 8)
            return
        n = max(0, min(chunk_bytes, len(self.data) - start))
        self.data[start:start + n] = raw[:n]
        self._mask_tail()

    # --- queries -----------------------------------------------------------------------
    def count(self) -> int:
        """Number of dirty granules."""
        return int.from_bytes(self.data, "little").bit_count()

    def is_dirty(self, offset: int) -> bool:
        i = offset >> self.gbits
        return i < self.nbits and bool(self.data[i >> 3] >> (i & 7) & 1)

    def bit_runs(self) -> Iterator[tuple[int, int]]:
        """Maximal runs ``[a, b)`` of set bits, found by scanning bytes."""
        data = self.data
        cur_a = cur_b = -1
        for m in _NONZERO_RUN.finditer(data):
            for m2 in _FULL_RUN_OR_BYTE.finditer(data, m.start(), m.end()):
                s, e = m2.span()
                v = data[s]
                if v == 0xFF:
                    pieces = ((s * 8, e * 8),)
                else:
                    pieces = _byte_runs(v, s * 8)
                for a, b in pieces:
                    if a == cur_b:
                        cur_b = b
                        continue
                    if cur_b >= 0:
                        yield cur_a, cur_b
                    cur_a, cur_b = a, b
        if cur_b >= 0:
            yield cur_a, cur_b

    def extents(self) -> Iterator[tuple[int, int]]:
        """Dirty guest byte ranges ``(offset, length)``, clipped to the disk size."""
        g = self.gbits
        for a, b in self.bit_runs():
            start = a << g
            yield start, min(b << g, self.size) - start


def _byte_runs(v: int, base: int) -> list[tuple[int, int]]:
    """Runs of set bits in one byte (at most 4), as absolute bit ranges."""
    out = []
    i = 0
    while i < 8:
        if v >> i & 1:
            j = i
            while j < 8 and v >> j & 1:
                j += 1
            out.append((base + i, base + j))
            i = j
        else:
            i += 1
    return out
