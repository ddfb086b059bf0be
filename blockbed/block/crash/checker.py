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

Speed without shortcuts in the verdict (each switchable; a test compares
both ways state by state):

- *memo*: states whose qcow2 metadata is byte-identical (:mod:`.metakey`)
  share one opened driver, one check verdict and one guest→host mapping;
  durable runs are compared against host bytes through that mapping, and
  anything that does not match is read through the driver;
- *incremental*: inside an epoch, a state with the same metadata key as the
  epoch's clean flush-boundary state differs from it only by the pieces it
  adds, so only the guest ranges mapped onto those pieces (plus writes that
  became durable since the boundary) are read back.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from struct import error as struct_error
from typing import Callable, Iterable, Sequence

from construct import ConstructError

from ..driver import BlockDriver, BlockError
from .hostlog import SECTOR, HostLog
from .metakey import metadata_key
from .oracle import ExpectedTracker, GuestWrite, Oracle
from .overlay import BufferNode, WorkingImage
from .states import CrashState, Piece, state_pieces

MAX_SECTOR_REPORTS = 4

# A crash state is hostile input for the format driver: whatever it raises
# while opening, checking or reading one is a finding about that state, never
# a reason to abort the sweep (MemoryError and KeyboardInterrupt still stop it).
_DRIVER_ERRORS = (OSError, ValueError, LookupError, ArithmeticError, TypeError, AssertionError,
                  RecursionError, struct_error, ConstructError)


def _errtext(e: BaseException) -> str:
    """BlockErrors carry their own message; anything else is a driver bug worth naming."""
    return str(e) if isinstance(e, BlockError) else f"the driver raised {type(e).__name__}: {e}"


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


def _dirty(buf: bytearray) -> bool:
    """qcow2 v3 with the dirty bit (lazy_refcounts): refcounts may lag by design."""
    return (len(buf) >= 80 and int.from_bytes(buf[4:8], "big") >= 3
            and bool(int.from_bytes(buf[72:80], "big") & 1))


def _repaired_view(buf: bytearray) -> BlockDriver:
    """What the next read-write open sees for a dirty lazy_refcounts image: QEMU (and
    our driver) repair the refcounts first (qcow2 spec, "dirty bit"), so the
    check applies to the repaired image.  A private copy: the only full copy the
    engine makes, and only for dirty states."""
    import logging
    from ..memory import MemoryDriver
    from ..qcow2.driver import Qcow2Driver
    logger = logging.getLogger("blockbed.qcow2")
    level = logger.level
    logger.setLevel(logging.CRITICAL)     # "refcounts were repaired" is expected here
    try:
        return Qcow2Driver(MemoryDriver(bytes(buf)), read_only=False, options={"backing": None})
    finally:
        logger.setLevel(level)


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
    ``memo``: reuse the check verdict, the opened driver and its guest→host
    mapping for states whose metadata is byte-identical (:mod:`.metakey`),
    and compare durable data against host bytes through that mapping;
    ``incremental``: inside an epoch, read back only what a state's pieces
    can have changed relative to the epoch's (clean) boundary state when both
    share the metadata key.  Both are pure optimisations; the tests run
    sweeps with them off and compare.
    """

    def __init__(self, base: bytes, log: HostLog, oracle: Oracle, fmt: str, seed: int = 0,
                 incremental: bool = True, memo: bool = True):
        self.base = base
        self.log = log
        self.oracle = oracle
        self.fmt = fmt
        self.seed = seed
        self.incremental = incremental
        self.memo = memo
        self.cache_limit = 256
        self.state_hook: Callable[[CrashState, Sequence[Piece], WorkingImage], None] | None = None
        self.checks_run = 0
        self.qemu_fraction = 0.0          # share of states also checked by qemu-img
        self.qemu_checked = 0
        self.qemu_agreed = 0

    # --- the sweep -------------------------------------------------------------------
    def run(self, states: Iterable[CrashState]) -> SweepResult:
        t0 = time.perf_counter()
        result = SweepResult()
        work = WorkingImage(self.base, self.log)
        tracker = self.oracle.expected_map()
        cache: dict[bytes, _View] = {}
        boundary: _Boundary | None = None
        qrng = random.Random(f"qemu/{self.seed}")
        for st in states:
            if st.base != work.applied:
                if st.base < work.applied:      # out of order: start again from the base image
                    work = WorkingImage(self.base, self.log)
                    cache.clear()
                work.advance(st.base)
                boundary = None
            if st.crash_pos < tracker.pos:
                tracker = self.oracle.expected_map()
            newly = tracker.advance(st.crash_pos)
            if boundary is not None:
                boundary.newly.extend(newly)
            pieces = state_pieces(self.log, st, self.seed)
            res, entry = self._check(st, pieces, work, tracker, boundary, cache)
            # only a clean boundary can vouch for the ranges later states skip
            if (self.incremental and not pieces and res.full and not res.violations
                    and entry is not None and entry.key is not None):
                boundary = _Boundary(entry, [])
            if self.state_hook is not None:
                self.state_hook(st, pieces, work)
            if self.qemu_fraction > 0 and self.fmt == "qcow2" and qrng.random() < self.qemu_fraction:
                res.violations += self._qemu_confirm(st, pieces, work, res)
            result.states.append(res)
            result.violations.extend(res.violations)
            result.bytes_verified += res.bytes_verified
            result.full_checks += res.full
        result.seconds = time.perf_counter() - t0
        return result

    def _qemu_confirm(self, st: CrashState, pieces: Sequence[Piece], work: WorkingImage,
                      res: StateResult) -> list[Violation]:
        """Check this state with the real qemu-img too; a differing verdict is a violation."""
        from .qemucheck import check_bytes
        image = work.materialize(pieces)
        q = check_bytes(image, _dirty(bytearray(image[:80])))
        self.qemu_checked += 1
        if q.ok == res.meta.ok:
            self.qemu_agreed += 1
            return []
        ours = "clean" if res.meta.ok else f"corrupt ({res.meta.message})"
        return [Violation(st.id, "qemu-disagrees",
                          f"our check says {ours}; {q.detail}", st.crash_pos)]

    def check_one(self, st: CrashState) -> StateResult:
        """Check a single state from scratch (replay)."""
        return self.run([st]).states[0]

    # --- one state -----------------------------------------------------------------------
    def _open(self, st: CrashState, node: BufferNode, key: bytes | None,
              cache: dict[bytes, "_View"]) -> tuple["_View | None", list[Violation]]:
        if key is not None:
            hit = cache.get(key)
            if hit is not None:
                return hit, ([Violation(st.id, "corruption", hit.problem, st.crash_pos)]
                             if hit.problem else [])
        try:
            view = open_view(node, self.fmt)
            # the check of a dirty lazy_refcounts image applies to its repaired copy;
            # reads keep going to the live buffer (the repair changes refcounts only)
            checked = _repaired_view(node.buf) if self.fmt == "qcow2" and _dirty(node.buf) else view
        except _DRIVER_ERRORS as e:
            msg = f"the image does not open: {_errtext(e)}"
            return None, [Violation(st.id, "corruption", msg, st.crash_pos)]
        self.checks_run += 1
        try:
            meta = metadata_check(checked, self.fmt)
        except _DRIVER_ERRORS as e:
            meta = MetaVerdict(False, 1, 0, f"check failed: {_errtext(e)}")
        problem = "" if meta.ok else f"{meta.corruptions} corruption(s): {meta.message}"
        entry = _View(key, view, meta, problem)
        if key is not None:
            if len(cache) >= self.cache_limit:
                cache.pop(next(iter(cache)))
            cache[key] = entry
        return entry, ([Violation(st.id, "corruption", problem, st.crash_pos)] if problem else [])

    def _check(self, st: CrashState, pieces: Sequence[Piece], work: WorkingImage,
               tracker: ExpectedTracker, boundary: "_Boundary | None",
               cache: dict[bytes, "_View"]) -> tuple[StateResult, "_View | None"]:
        with work.overlay(pieces) as node:
            key = metadata_key(work.buf, self.fmt) if self.memo else None
            entry, violations = self._open(st, node, key, cache)
            if entry is None:
                return StateResult(st, MetaVerdict(False, 1, 0, violations[0].message),
                                   violations, 0, True), None
            ranges: list[tuple[int, int]] | None = None
            if boundary is not None and pieces and key is not None and key == boundary.entry.key:
                ranges = boundary.entry.changed_guest_ranges(self.log, pieces)
                ranges += [(w.offset, w.end) for w in boundary.newly]
            viol, nbytes = self._verify(st, entry.view, tracker, ranges,
                                        entry if self.memo else None, work.buf)
            return StateResult(st, entry.meta, violations + viol, nbytes, ranges is None), entry

    def _verify(self, st: CrashState, view: BlockDriver, tracker: ExpectedTracker,
                ranges: list[tuple[int, int]] | None, entry: "_View | None" = None,
                buf: bytearray | None = None) -> tuple[list[Violation], int]:
        """Read back the expected runs (all, or those overlapping ``ranges``).

        Fast path: with the state's guest→host mapping (``entry``, from the
        driver's ``block_status``, shared by every state with the same
        metadata) a run is compared straight against the host bytes in
        ``buf``.  Anything the mapping cannot answer, and every mismatch, goes
        through a real read by the driver, so a reported loss is always what
        the driver returns.
        """
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
        fast = entry.mapping() if entry is not None else None
        for a, b, w in runs:
            if b > size:
                b = size
            if a >= b:
                continue
            n = b - a
            if fast is not None and _matches_via_mapping(fast, buf, a, b, w):
                nbytes += n
                continue
            if len(scratch) < n:
                scratch = bytearray(n)
            mv = memoryview(scratch)[:n]
            try:
                view.read(a, mv)
            except _DRIVER_ERRORS as e:
                out.append(Violation(st.id, "corruption",
                                     f"reading guest bytes {a}..{b} failed: {_errtext(e)}", st.crash_pos))
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


def _matches_via_mapping(m: tuple[list[int], list[int], list[int]], buf: bytearray, a: int, b: int,
                         w: GuestWrite) -> bool:
    """Does guest [a, b) hold ``w``'s data, judged from the mapping and host bytes?
    False means "not shown here" (the caller then reads through the driver)."""
    gs, ge, ho = m
    k = bisect_right(ge, a)
    pos = a
    with memoryview(buf) as mv:
        while pos < b:
            if k >= len(gs) or gs[k] > pos:
                return False
            end = min(b, ge[k])
            h = ho[k]
            want = w.expected(pos, end)
            if h >= 0:
                hs = h + (pos - gs[k])
                if hs + (end - pos) > len(buf) or mv[hs:hs + (end - pos)] != want:
                    return False
            elif h == -1:
                if bytes(want).count(0) != end - pos:
                    return False
            else:
                return False
            pos = end
            k += 1
    return True


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
class _View:
    """An opened state (driver + check verdict), shared by states with the same key."""
    key: bytes | None
    view: BlockDriver
    meta: MetaVerdict
    problem: str
    _hs: list[int] | None = None
    _he: list[int] = field(default_factory=list)
    _gs: list[int] = field(default_factory=list)

    _map: "tuple[list[int], list[int], list[int]] | None" = None

    def mapping(self) -> "tuple[list[int], list[int], list[int]] | None":
        """Guest extents as (starts, ends, host offsets); host -1 = reads zeros,
        -2 = only the driver can say (compressed, backing …)."""
        if self._map is None:
            try:
                size = self.view.length()
                ext = self.view.block_status(0, size) if size else []
            except _DRIVER_ERRORS:
                return None
            gs, ge, ho = [], [], []
            for e in ext:
                gs.append(e.offset); ge.append(e.offset + e.length)
                if e.data and e.host_offset is not None and not e.zero:
                    ho.append(e.host_offset)
                elif e.zero or (not e.data and e.host_offset is None and e.allocated is not False) \
                        or (not e.data and not e.allocated):
                    ho.append(-1)
                else:
                    ho.append(-2)
            self._map = (gs, ge, ho)
        return self._map

    def changed_guest_ranges(self, log: HostLog, pieces: Sequence[Piece]) -> list[tuple[int, int]]:
        """Guest ranges mapped onto the host bytes the pieces write (same mapping as the
        boundary: the metadata key is equal)."""
        if self._hs is None:
            size = self.view.length()
            ext = self.view.block_status(0, size) if size else []
            hs, he, gs = [], [], []
            for e in sorted((e for e in ext if e.host_offset is not None and e.data),
                            key=lambda e: e.host_offset):
                hs.append(e.host_offset); he.append(e.host_offset + e.length); gs.append(e.offset)
            self._hs, self._he, self._gs = hs, he, gs
        hs, he, gs = self._hs, self._he, self._gs
        out: list[tuple[int, int]] = []
        ops = log.ops
        for i, a, b in pieces:
            ha = ops[i].offset + a
            hb = ops[i].offset + b
            k = bisect_right(he, ha)
            while k < len(hs) and hs[k] < hb:
                lo, hi = max(ha, hs[k]), min(hb, he[k])
                g = gs[k] + (lo - hs[k])
                out.append((g, g + (hi - lo)))
                k += 1
        return out


@dataclass
class _Boundary:
    """The epoch's flush-boundary state, fully verified; ``newly``: claims since."""
    entry: _View
    newly: list[GuestWrite]


