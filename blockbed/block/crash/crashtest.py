"""Sweep a recorded run's crash states and report (and replay one state).

Recording the run needs the machine and a device model, so that half lives
above the block layer in :mod:`blockbed.crashrun`; ``blockbed crashtest``, the
conformance matrix tests and the demo table all go through
:func:`blockbed.crashrun.crashtest.crashtest`, so they mean the same thing by
"violation".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .checker import Checker, SweepResult, Violation
from .runlog import LoadedRun, load_run
from .states import CrashState, enumerate_states

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


def replay_state(run_dir: str | Path, state_id: str, seed: int | None = None):
    """Check one state of a saved run from scratch; returns (state, StateResult, oracle)."""
    from .states import parse_state_id
    run = load_run(run_dir)
    seed = int(run.meta.get("seed", 0)) if seed is None else seed
    st: CrashState = parse_state_id(run.log, state_id)
    oracle, _ = run.oracle()
    chk = Checker(run.base, run.log, oracle, run.fmt, seed, incremental=False, memo=False)
    return st, chk.check_one(st), oracle
