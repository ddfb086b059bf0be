"""The durability oracle: which guest writes must survive a crash at host position *p*.

Input: the BlockBackend request log (submit/completion order, flags, WCE at
submit and completion, written data) tied to host-log positions by
:class:`~.timeline.CorrelatedRequestLog`.  semantics.md gives the rules; at
the backend they reduce to three, because the backend is where every
protocol's promise arrives (a device turns ATA FLUSH CACHE, SCSI SYNCHRONIZE
CACHE and VIRTIO_BLK_T_FLUSH into ``flush()``, FUA bits into ``fua=True``, and
WCE changes into ``set_write_cache``):

1. **flush**: a write that completed before a flush was *submitted* is
   durable once that flush has completed (Linux PREFLUSH semantics;
   virtio 5.2 "a FLUSH submitted after the write completed has itself
   completed").  A flush the cache mode dropped (``cache=unsafe``) still
   counts: the device was told it completed, so the promise was given —
   which is exactly why ``unsafe`` must show violations.
2. **FUA**: a write with ``fua`` is durable at its own completion.
3. **write cache off for its whole flight**: WCE off at submit *and* at
   completion → durable at completion (QEMU sends such writes FUA; this is
   how writethrough, directsync, ATA SET FEATURES 0x82, the SCSI caching page
   and virtio's ``writeback=0`` reach the oracle).

A second source of promises is the guest's own record (flushtest prints
which writes it was told are durable); :meth:`Oracle.add_guest_claim` adds
those, so a device that swallows a promise before the backend (a FLUSH
completed without calling ``flush()``, a FUA bit dropped) is caught too.

What a crash state must show, for every sector covered by a write durable
at or before *p* (semantics.md, last paragraph): the data of the *latest
submitted* such write, or the data of any write to that sector submitted
after it and before the crash, or zeros if a later discard/write-zeroes was
submitted before the crash.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .hostlog import SECTOR
from .intervals import IntervalMap

WRITE_KINDS = ("write", "write_zeroes")
ERASE_KINDS = ("discard",)


@dataclass(slots=True, eq=False)
class GuestWrite:
    """One backend write-like request (write, write_zeroes or discard)."""
    req: int                 # request-log id
    kind: str
    offset: int
    length: int
    data: bytes | None       # None: reads as zeros once applied
    submit_seq: int
    submit_pos: int
    complete_seq: int | None
    complete_pos: int | None
    ok: bool                 # completed and reported success with no error
    dropped: bool = False
    durable_pos: int | None = None
    reason: str = ""
    guest_id: int | None = None   # the guest's own write id (flushtest sectors)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def expected(self, start: int, end: int) -> bytes | memoryview:
        """The bytes this write leaves in [start, end) (a sub-range of it)."""
        if self.data is None:
            return bytes(end - start)
        return memoryview(self.data)[start - self.offset:end - self.offset]

    def describe(self) -> str:
        gid = f" guest write {self.guest_id}" if self.guest_id is not None else ""
        return (f"request {self.req}{gid} ({self.kind} offset {self.offset} length {self.length})")

    def promise(self, durable_pos: int, reason: str) -> None:
        if self.durable_pos is None or durable_pos < self.durable_pos:
            self.durable_pos = durable_pos
            self.reason = reason


@dataclass
class Disagreement:
    """The guest was promised durability the backend never heard of."""
    write: GuestWrite
    guest_pos: int
    guest_reason: str
    backend_pos: int | None = None     # when the backend's own rules made it durable

    def message(self) -> str:
        back = (f"the backend made it durable only at host op {self.backend_pos}"
                if self.backend_pos is not None else "the backend never made it durable")
        return (f"{self.write.describe()}: the guest was promised durability "
                f"({self.guest_reason}) by host op {self.guest_pos}, but {back}")


@dataclass
class Oracle:
    """Durability claims over one recorded run.  Build with :meth:`from_request_log`."""
    writes: list[GuestWrite]                  # by submit order
    end_pos: int                              # host ops in the whole run
    flushes_completed: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    _by_req: dict[int, GuestWrite] = field(default_factory=dict)
    _sector_index: dict[int, list[GuestWrite]] | None = None

    def __post_init__(self) -> None:
        self._by_req = {w.req: w for w in self.writes}

    # --- building -------------------------------------------------------------------
    @classmethod
    def from_request_log(cls, entries: Iterable, positions: Sequence[int], end_pos: int) -> "Oracle":
        """Apply the three backend rules to ``entries`` (RequestLogEntry objects).

        ``positions[seq]`` is the host position of backend sequence number ``seq``.
        """
        writes: list[GuestWrite] = []
        flushes: list[tuple[int, int, int]] = []  # (submit_seq, complete_pos, req)
        for e in entries:
            if e.kind in WRITE_KINDS or e.kind in ERASE_KINDS:
                done = e.complete_seq is not None
                ok = done and e.result == 0 and e.error == 0
                data = e.data if e.kind == "write" else None
                if e.kind == "write" and data is None:
                    raise ValueError("the request log kept no data: enable keep_data "
                                     "(CorrelatedRequestLog does)")
                w = GuestWrite(e.id, e.kind, e.offset, e.length, data, e.submit_seq,
                               positions[e.submit_seq], e.complete_seq,
                               positions[e.complete_seq] if done else None, ok,
                               dropped=bool(e.dropped))
                writes.append(w)
                if ok and e.kind in WRITE_KINDS:
                    if e.fua:
                        w.promise(w.complete_pos, "FUA write completed")  # type: ignore[arg-type]
                    elif not e.wce_at_submit and e.wce_at_complete is False:
                        w.promise(w.complete_pos, "write cache off for its whole flight")  # type: ignore[arg-type]
            elif e.kind == "flush":
                if e.complete_seq is not None and e.result == 0 and e.error == 0:
                    flushes.append((e.submit_seq, positions[e.complete_seq], e.id))
        flushes.sort()
        # durable_pos(w) = min complete_pos over flushes submitted after w completed
        suffix: list[tuple[int, int]] = [(0, 0)] * len(flushes)
        best: tuple[int, int] | None = None
        for k in range(len(flushes) - 1, -1, -1):
            cand = (flushes[k][1], flushes[k][2])
            best = cand if best is None or cand < best else best
            suffix[k] = best
        fseqs = [f[0] for f in flushes]
        for w in writes:
            if w.ok and w.kind in WRITE_KINDS:
                k = bisect_right(fseqs, w.complete_seq)  # type: ignore[arg-type]
                if k < len(flushes):
                    pos, req = suffix[k]
                    w.promise(pos, f"flush request {req} completed after it")
        writes.sort(key=lambda w: w.submit_seq)
        return cls(writes, end_pos, flushes_completed=len(flushes))

    def write_by_req(self, req: int) -> GuestWrite | None:
        return self._by_req.get(req)

    def add_guest_claim(self, w: GuestWrite, pos: int, reason: str) -> None:
        """The guest says ``w`` was durable by host position ``pos``.

        If the backend's own rules do not already make it durable by then,
        that is a disagreement (a promise lost between device and backend);
        the claim is added either way, so crash states check it.
        """
        if w.durable_pos is None or w.durable_pos > pos:
            self.disagreements.append(Disagreement(w, pos, reason, w.durable_pos))
            w.promise(pos, "guest: " + reason)

    # --- queries ----------------------------------------------------------------------
    def claims(self) -> list[GuestWrite]:
        """Durable writes, by the host position from which they must survive."""
        return sorted((w for w in self.writes if w.durable_pos is not None),
                      key=lambda w: (w.durable_pos, w.submit_seq))

    def durable_count(self) -> int:
        return sum(1 for w in self.writes if w.durable_pos is not None)

    def candidates(self, sector: int) -> list[GuestWrite]:
        """Every write-like request covering byte offset ``sector`` (slow path)."""
        if self._sector_index is None:
            idx: dict[int, list[GuestWrite]] = {}
            for w in self.writes:
                for s in range(w.offset // SECTOR, (w.end + SECTOR - 1) // SECTOR):
                    idx.setdefault(s, []).append(w)
            self._sector_index = idx
        return self._sector_index.get(sector // SECTOR, [])

    def accepts(self, sector: int, content: bytes, durable: GuestWrite, crash_pos: int) -> bool:
        """May a crash at ``crash_pos`` leave ``content`` in the sector at byte ``sector``
        when ``durable`` is the latest durable write covering it?"""
        end = sector + len(content)
        if bytes(durable.expected(sector, end)) == content:
            return True
        for w in self.candidates(sector):
            if w.submit_seq <= durable.submit_seq or w.submit_pos > crash_pos:
                continue
            if w.kind in ERASE_KINDS:
                if not w.dropped and content.count(0) == len(content):
                    return True
            elif bytes(w.expected(sector, end)) == content:
                return True
        return False

    def expected_map(self) -> "ExpectedTracker":
        return ExpectedTracker(self)


class ExpectedTracker:
    """The latest durable write per byte range, advanced monotonically in crash position."""

    def __init__(self, oracle: Oracle):
        self.claims = oracle.claims()
        self.map: IntervalMap[GuestWrite] = IntervalMap()
        self.next = 0
        self.pos = -1

    def advance(self, pos: int) -> list[GuestWrite]:
        """Activate every claim with ``durable_pos <= pos``; return the newly active ones."""
        if pos < self.pos:
            raise ValueError("crash states must be visited in increasing position")
        self.pos = pos
        new: list[GuestWrite] = []
        while self.next < len(self.claims) and self.claims[self.next].durable_pos <= pos:  # type: ignore[operator]
            w = self.claims[self.next]
            self.map.assign(w.offset, w.end, w, keep=_newer)
            new.append(w)
            self.next += 1
        return new


def _newer(old: GuestWrite, new: GuestWrite) -> bool:
    return old.submit_seq > new.submit_seq
