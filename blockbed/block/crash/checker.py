"""Check crash states: the image opens and checks clean, and every durable write reads back.

For each :class:`~.states.CrashState`, in log order:

1. **metadata** (semantics.md: "the image must open and check without
   corruption; leaked clusters are allowed, lost or wrong mappings are
   not"): open the state with our format driver, read-only, and for qcow2
   run the qcow2 check (:func:`blockbed.block.qcow2.check.check_image`).
   Leaks are fine; corruptions, an image that will not open, or one that
   fails a read are violations.
2. **durability**: every byte range whose latest durable write (per the
   :class:`~.oracle.Oracle`, at the state's crash position) is known must
   read back as that write, or as a later write submitted before the crash
   (slow path, per sector).

Incremental checking (``incremental=True``, the default): a state inside
an epoch differs from the epoch's flush-boundary state only by the pieces it
adds.  When none of them touches a qcow2 metadata cluster of the boundary
state (the driver's overlap map: header, L1, L2, refcount table and blocks,
snapshot tables), the mapping is unchanged, so the boundary state's check
verdict stands and only guest ranges mapped onto the pieces (plus writes
that became durable since the boundary) need reading.  Any doubt (a piece on
metadata, a dirty boundary verdict, a raw image's identity map aside) falls
back to the full check; a test runs both ways and compares.
"""

from __future__ import annotations

import errno
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..driver import BlockDriver, BlockError
from .hostlog import SECTOR, HostLog, OpKind
from .oracle import ExpectedTracker, GuestWrite, Oracle
from .overlay import BufferNode, WorkingImage
from .states import CrashState, Piece, state_pieces

MAX_SECTOR_REPORTS = 4


@dataclass
class Violation:
    state: str
    kind: str          # corruption | durability | disagreement | qemu-disagrees
    message: str
    crash_pos: int | None = None

    def to_json(self) -> dict:
        return {"state": self.state, "kind": self.kind, "message": self.message,
                "crash_pos": self.crash_pos}


@dataclass
class MetaVerdict:
    ok: bool
    corruptions: int = 0
    leaks: int = 0
    message: str = ""


@dataclass
class StateResult:
    state: CrashState
    meta: MetaVerdict
    violations: list[Violation]
    bytes_verified: int
    full: bool              # the full path ran (not the incremental shortcut)


@dataclass
class SweepResult:
    states: list[StateResult] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0
    bytes_verified: int = 0
    full_checks: int = 0

    @property
    def states_checked(self) -> int:
        return len(self.states)

    @property
    def states_per_second(self) -> float:
        return self.states_checked / self.seconds if self.seconds > 0 else 0.0

    @property
    def violating_states(self) -> int:
        return sum(1 for s in self.states if s.violations)


def open_view(node: BlockDriver, fmt: str) -> BlockDriver:
    """The guest's view of a host state: ``fmt`` opened read-only over ``node``."""
    if fmt == "raw":
        from ..raw import RawDriver
        return RawDriver(node, read_only=True)
    if fmt == "qcow2":
        from ..qcow2.driver import Qcow2Driver
        return Qcow2Driver(node, read_only=True, options={"backing": None})
    raise ValueError(f"crash checking supports format raw or qcow2, not {fmt}")


def metadata_check(view: BlockDriver, fmt: str) -> MetaVerdict:
    """Run the format's consistency check on an opened view (qcow2 only)."""
    if fmt != "qcow2":
        return MetaVerdict(True)
    from ..qcow2.check import check_image
    res = check_image(view, repair=None)
    corrupt = int(getattr(res, "corruptions", 0)) + int(getattr(res, "check_errors", 0))
    leaks = int(getattr(res, "leaks", 0))
    msgs = getattr(res, "messages", None) or getattr(res, "errors", None) or []
    msg = "; ".join(str(m) for m in list(msgs)[:3]) if not isinstance(msgs, int) else ""
    return MetaVerdict(corrupt == 0, corrupt, leaks, msg)


class Checker:
    """Sweeps crash states of one recorded run.

    ``base``: the host image bytes before the run.  ``fmt``: raw or qcow2.
    ``guest_size``: the guest-visible length (for raw it is the file length).
    """

    def __init__(self, base: bytes, log: HostLog, oracle: Oracle, fmt: str, seed: int = 0,
                 incremental: bool = True):
        self.base = base
        self.log = log
        self.oracle = oracle
        self.fmt = fmt
        self.seed = seed
        self.incremental = incremental
        self.state_hook: Callable[[CrashState, Sequence[Piece], WorkingImage], None] | None = None

    # --- the sweep -------------------------------------------------------------------
    def run(self, states: Iterable[CrashState]) -> SweepResult:
        t0 = time.perf_counter()
        result = SweepResult()
        work = WorkingImage(self.base, self.log)
        tracker = self.oracle.expected_map()
        boundary: _Boundary | None = None
        for st in states:
            if st.base != work.applied:
                if st.base < work.applied:      # out of order: restart (replay of one state)
                    work = WorkingImage(self.base, self.log)
                    tracker = self.oracle.expected_map()
                work.advance(st.base)
                boundary = None
            pieces = state_pieces(self.log, st, self.seed)
            if st.crash_pos < tracker.pos:
                tracker = self.oracle.expected_map()
            newly = tracker.advance(st.crash_pos)
            if boundary is not None:
                boundary.newly.extend(newly)
            res = self._check(st, pieces, work, tracker, boundary)
            if self.incremental and not pieces and res.meta.ok and res.full:
                boundary = _Boundary.build(self, work, st)
            if self.state_hook is not None:
                self.state_hook(st, pieces, work)
            result.states.append(res)
            result.violations.extend(res.violations)
            result.bytes_verified += res.bytes_verified
            result.full_checks += res.full
        result.seconds = time.perf_counter() - t0
        return result

    def check_one(self, st: CrashState) -> StateResult:
        """Check a single state from scratch (replay)."""
        self.incremental = False
        res = self.run([st])
        return res.states[0]

    # --- one state -----------------------------------------------------------------------
    def _check(self, st: CrashState, pieces: Sequence[Piece], work: WorkingImage,
               tracker: ExpectedTracker, boundary: "_Boundary | None") -> StateResult:
        ranges: list[tuple[int, int]] | None = None
        if boundary is not None and pieces:
            ranges = boundary.changed_guest_ranges(self.log, pieces)
        with work.overlay(pieces) as node:
            if ranges is not None:
                meta = boundary.meta  # type: ignore[union-attr]
                view = boundary.view_for(node)
                for w in boundary.newly:  # type: ignore[union-attr]
                    ranges.append((w.offset, w.end))
                viol, nbytes = self._verify(st, view, tracker, ranges)
                return StateResult(st, meta, viol, nbytes, False)
            violations: list[Violation] = []
            try:
                view = open_view(node, self.fmt)
            except (BlockError, ValueError) as e:
                msg = f"the image does not open: {e}"
                return StateResult(st, MetaVerdict(False, 1, 0, msg),
                                   [Violation(st.id, "corruption", msg, st.crash_pos)], 0, True)
            try:
                meta = metadata_check(view, self.fmt)
            except (BlockError, ValueError) as e:
                meta = MetaVerdict(False, 1, 0, f"check failed: {e}")
            if not meta.ok:
                violations.append(Violation(st.id, "corruption",
                                            f"{meta.corruptions} corruption(s): {meta.message}",
                                            st.crash_pos))
            viol, nbytes = self._verify(st, view, tracker, None)
            violations += viol
            return StateResult(st, meta, violations, nbytes, True)

    def _verify(self, st: CrashState, view: BlockDriver, tracker: ExpectedTracker,
                ranges: list[tuple[int, int]] | None) -> tuple[list[Violation], int]:
        """Read back the expected runs (all, or those overlapping ``ranges``)."""
        out: list[Violation] = []
        nbytes = 0
        bad_sectors = 0
        size = view.length()
        if ranges is None:
            runs = list(tracker.map.runs())
        else:
            runs = []
            for a, b in _merge(ranges):
                runs.extend(tracker.map.runs(a, b))
        scratch = bytearray()
        for a, b, w in runs:
            if b > size:
                b = size
            if a >= b:
                continue
            n = b - a
            if len(scratch) < n:
                scratch = bytearray(n)
            mv = memoryview(scratch)[:n]
            try:
                view.read(a, mv)
            except (BlockError, ValueError) as e:
                out.append(Violation(st.id, "corruption",
                                     f"reading guest bytes {a}..{b} failed: {e}", st.crash_pos))
                mv.release()
                continue
            nbytes += n
            if mv == w.expected(a, b):
                mv.release()
                continue
            # slow path: sector by sector, later writes may stand in
            for s in range(a - a % SECTOR, b, SECTOR):
                lo, hi = max(s, a), min(s + SECTOR, b)
                content = bytes(mv[lo - a:hi - a])
                if self.oracle.accepts(lo, content, w, st.crash_pos):
                    continue
                bad_sectors += 1
                if bad_sectors <= MAX_SECTOR_REPORTS:
                    out.append(Violation(st.id, "durability", self._describe_loss(lo, content, w),
                                         st.crash_pos))
            mv.release()
        if bad_sectors > MAX_SECTOR_REPORTS:
            out.append(Violation(st.id, "durability",
                                 f"... {bad_sectors - MAX_SECTOR_REPORTS} more lost sector(s) "
                                 "in this state", st.crash_pos))
        return out, nbytes

    def _describe_loss(self, off: int, content: bytes, w: GuestWrite) -> str:
        found = "zeros" if content.count(0) == len(content) else _identify(self.oracle, off, content)
        return (f"guest sector {off // SECTOR} (byte {off}): {w.describe()} was durable "
                f"({w.reason}) but the sector holds {found}")


def _identify(oracle: Oracle, off: int, content: bytes) -> str:
    for w in reversed(oracle.candidates(off)):
        if bytes(w.expected(off, off + len(content))) == content:
            return f"the data of older {w.describe()}"
    return "data of no write submitted to it (stale or foreign)"


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    ranges = sorted(r for r in ranges if r[0] < r[1])
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


@dataclass
class _Boundary:
    """What the incremental shortcut needs from an epoch's flush-boundary state."""
    meta: MetaVerdict
    fmt: str
    host_starts: list[int]            # mapping sorted by host offset
    host_ends: list[int]
    guest_of: list[int]
    meta_starts: list[int]            # metadata clusters (qcow2), sorted
    meta_ends: list[int]
    host_len: int
    newly: list[GuestWrite]

    @classmethod
    def build(cls, chk: Checker, work: WorkingImage, st: CrashState) -> "_Boundary | None":
        node = BufferNode(work.buf)
        try:
            view = open_view(node, chk.fmt)
            size = view.length()
            ext = view.block_status(0, size) if size else []
        except (BlockError, ValueError):
            return None
        hs, he, gs = [], [], []
        for e in sorted((e for e in ext if e.host_offset is not None and e.data),
                        key=lambda e: e.host_offset):
            hs.append(e.host_offset); he.append(e.host_offset + e.length); gs.append(e.offset)
        ms: list[int] = []
        me: list[int] = []
        if chk.fmt == "qcow2":
            regions = _qcow2_metadata_regions(view)
            if regions is None:
                return None
            for a, b in regions:
                ms.append(a); me.append(b)
        return cls(MetaVerdict(True), chk.fmt, hs, he, gs, ms, me, len(work.buf), [])

    def view_for(self, node: BufferNode) -> BlockDriver:
        return open_view(node, self.fmt)

    def changed_guest_ranges(self, log: HostLog, pieces: Sequence[Piece]) -> list[tuple[int, int]] | None:
        """Guest ranges whose content the pieces may change, or None if a piece
        touches metadata (then the full check must run)."""
        out: list[tuple[int, int]] = []
        ops = log.ops
        for i, a, b in pieces:
            ha = ops[i].offset + a
            hb = ops[i].offset + b
            k = bisect_right(self.meta_ends, ha)
            if k < len(self.meta_starts) and self.meta_starts[k] < hb:
                return None
            k = bisect_right(self.host_ends, ha)
            while k < len(self.host_starts) and self.host_starts[k] < hb:
                lo, hi = max(ha, self.host_starts[k]), min(hb, self.host_ends[k])
                g = self.guest_of[k] + (lo - self.host_starts[k])
                out.append((g, g + (hi - lo)))
                k += 1
        return out


def _qcow2_metadata_regions(view: BlockDriver) -> list[tuple[int, int]] | None:
    """Sorted, merged host ranges holding qcow2 metadata in this state (from the
    driver's overlap map, which lists every metadata cluster by kind)."""
    ov = getattr(view, "overlap", None)
    kinds = getattr(ov, "kinds", None)
    if kinds is None:
        return None
    cb = ov.cluster_bits  # type: ignore[union-attr]
    return _merge([(ci << cb, (ci + 1) << cb) for ci in kinds])
