"""One crash test end to end: record a guest run, sweep its crash states, report.

Shared by ``blockbed crashtest``, the conformance matrix tests and the demo
table (:mod:`.demo`), so all three mean the same thing by "violation".
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checker import Checker, SweepResult, Violation
from .runlog import LoadedRun, load_run, record_guest_run
from .states import CrashState, enumerate_states

REPO = Path(__file__).resolve().parents[3]
DEFAULT_KERNEL = REPO / "guests" / "build" / "flushtest.elf"


def default_append(interface: str, seed: int, ops: int = 200, qd: int = 4) -> str:
    return f"dev={interface} seed={seed + 1} ops={ops} qd={qd}"


@dataclass
class CrashReport:
    run_dir: Path
    meta: dict
    host_counts: dict[str, int]
    epochs: int
    prefixes: int
    requests: int
    durable: int
    guest_promises: int
    guest_complete: bool
    guest_exit: int
    sweep: SweepResult
    qemu_checked: int = 0
    qemu_agreed: int = 0
    record_seconds: float = 0.0
    violations: list[Violation] = field(default_factory=list)
    guest_config: dict[str, str] = field(default_factory=dict)
    fua_requests: int = 0          # backend writes that arrived with FUA set
    backend_errors: int = 0        # requests the block layer failed

    @property
    def ok(self) -> bool:
        return not self.violations

    def writes_verified(self) -> int:
        """Guest writes the sweep held to a durability promise."""
        return self.durable

    def to_json(self) -> dict:
        s = self.sweep
        return {
            "run_dir": str(self.run_dir), "drive": self.meta.get("drive"),
            "format": self.meta.get("format"), "cache": self.meta.get("cache"),
            "interface": self.meta.get("interface"),
            "guest_exit": self.guest_exit, "guest_record_complete": self.guest_complete,
            "host_ops": self.host_counts, "crash_points": {"flush_boundaries": self.epochs,
                                                          "prefixes": self.prefixes},
            "requests": self.requests, "fua_requests": self.fua_requests,
            "durable_writes": self.durable,
            "guest_promises": self.guest_promises,
            "states_checked": s.states_checked, "seconds": round(s.seconds, 3),
            "states_per_second": round(s.states_per_second, 1),
            "full_checks": s.full_checks, "bytes_verified": s.bytes_verified,
            "qemu_checked": self.qemu_checked, "qemu_agreed": self.qemu_agreed,
            "violating_states": s.violating_states,
            "violations": [v.to_json() for v in self.violations],
            "ok": self.ok,
        }


def sweep_run(run: LoadedRun, states: int | None, seed: int, qemu_fraction: float = 0.0,
              guest_exit: int | None = None) -> CrashReport:
    oracle, attached = run.oracle()
    epochs = run.log.epochs()
    chosen = enumerate_states(run.log, states, seed)
    chk = Checker(run.base, run.log, oracle, run.fmt, seed)
    chk.qemu_fraction = qemu_fraction
    sweep = chk.run(chosen)
    violations: list[Violation] = []
    for d in oracle.disagreements:
        violations.append(Violation("-", "disagreement", d.message(), d.guest_pos))
    for gid in getattr(attached, "unmatched", [])[:5]:
        violations.append(Violation("-", "disagreement",
                                    f"the guest was promised write {gid} durable, but no such "
                                    "write reached the block layer", None))
    exit_status = run.meta.get("exit_status", 0) if guest_exit is None else guest_exit
    if exit_status != 0:
        violations.append(Violation("-", "guest", f"the guest exited with status {exit_status} "
                                    f"({run.meta.get('exit')}): see {run.path / 'transcript.txt'}",
                                    None))
    violations += sweep.violations
    prefixes = sum(e.count if e.flush is None else max(0, e.count - 1) for e in epochs)
    return CrashReport(run.path, run.meta, run.log.counts(), len(epochs), prefixes,
                       len(run.entries), oracle.durable_count(), len(run.record.promises),
                       run.record.complete, exit_status, sweep, chk.qemu_checked,
                       chk.qemu_agreed, violations=violations,
                       guest_config=dict(run.record.config),
                       fua_requests=sum(1 for e in run.entries if e.kind == "write" and e.fua),
                       backend_errors=sum(1 for e in run.entries if e.error or e.result))


def crashtest(drive: str, *, kernel: str | Path | None = None, append: str | None = None,
              states: int | None = 1000, seed: int = 0, qemu_fraction: float = 0.0,
              workdir: str | Path | None = None, keep: bool | None = None,
              timeout: float = 120.0, ops: int = 200, qd: int = 4) -> CrashReport:
    """Record ``kernel`` (default flushtest) on ``drive`` and check its crash states.

    The run directory is kept when ``keep`` is True, or (``keep`` None) when
    there are violations, so that ``--replay`` can reproduce them.
    """
    from ..drivespec import DriveSpecError, parse_drive_spec
    from .faults import split_faults
    try:
        iface = parse_drive_spec(split_faults(drive)[0]).interface
    except DriveSpecError as e:
        raise ValueError(str(e)) from None
    kernel = Path(kernel) if kernel else DEFAULT_KERNEL
    if not kernel.exists():
        raise ValueError(f"{kernel}: no such guest (build the guests: make -C guests)")
    if append is None:
        append = default_append(iface, seed, ops, qd)
    made = workdir is None
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="blockbed-crash-"))
    t0 = time.perf_counter()
    try:
        record_guest_run(drive, str(kernel), append, wd, seed=seed, timeout=timeout)
        rec_s = time.perf_counter() - t0
        report = sweep_run(load_run(wd), states, seed, qemu_fraction)
        report.record_seconds = rec_s
    except BaseException:
        if made and not keep:
            shutil.rmtree(wd, ignore_errors=True)
        raise
    if made and (keep is False or (keep is None and report.ok)):
        shutil.rmtree(wd, ignore_errors=True)
    return report


def replay_state(run_dir: str | Path, state_id: str, seed: int | None = None):
    """Check one state of a saved run from scratch; returns (state, StateResult, oracle)."""
    from .states import parse_state_id
    run = load_run(run_dir)
    seed = int(run.meta.get("seed", 0)) if seed is None else seed
    st: CrashState = parse_state_id(run.log, state_id)
    oracle, _ = run.oracle()
    chk = Checker(run.base, run.log, oracle, run.fmt, seed, incremental=False, memo=False)
    return st, chk.check_one(st), oracle
