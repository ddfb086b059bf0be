"""One crash test end to end: record a guest run, sweep its crash states, report.

Shared by ``blockbed crashtest``, the conformance matrix tests and the demo
table (:mod:`.demo`), so all three mean the same thing by "violation".
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ..block.crash.crashtest import CrashReport, sweep_run
from ..block.crash.runlog import load_run
from .record import record_guest_run

REPO = Path(__file__).resolve().parents[2]
DEFAULT_KERNEL = REPO / "guests" / "build" / "flushtest.elf"


def default_append(interface: str, seed: int, ops: int = 200, qd: int = 4) -> str:
    return f"dev={interface} seed={seed + 1} ops={ops} qd={qd}"


def crashtest(drive: str, *, kernel: str | Path | None = None, append: str | None = None,
              states: int | None = 1000, seed: int = 0, qemu_fraction: float = 0.0,
              workdir: str | Path | None = None, keep: bool | None = None,
              timeout: float = 120.0, ops: int = 200, qd: int = 4) -> CrashReport:
    """Record ``kernel`` (default flushtest) on ``drive`` and check its crash states.

    The run directory is kept when ``keep`` is True, or (``keep`` None) when
    there are violations, so that ``--replay`` can reproduce them.
    """
    from ..block.crash.faults import split_faults
    from ..block.drivespec import DriveSpecError, parse_drive_spec
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
