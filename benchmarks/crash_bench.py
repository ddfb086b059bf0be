#!/usr/bin/env python3
"""Crash states checked per second on a 64 MiB qcow2 workload (issue 8 target: >= 500/s).

The workload is flushtest's mix driven straight at a BlockBackend
(blockbed.block.crash.workload): writes of 1–16 sectors over a 4 MiB hot
region of a 64 MiB qcow2 image (64 KiB clusters; overwrites, allocation,
FUA, flushes, discards, write-zeroes), cache=writeback.  The engine then
checks ``--states`` crash states: each opened with our qcow2 driver, checked
(qcow2 check, memoised by metadata content), and every durable write read
back.  Recording is not timed; the sweep is, best of ``--reps``.

A guest-driven variant (``--guest``) records flushtest on virtio instead.
``--check`` exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blockbed.block.crash.checker import Checker  # noqa: E402
from blockbed.block.crash.session import Recording  # noqa: E402
from blockbed.block.crash.states import enumerate_states  # noqa: E402
from blockbed.block.crash.workload import WorkloadConfig, run_workload  # noqa: E402

TARGET = 500.0


def bench(states: int, ops: int, reps: int, seed: int, cluster_size: int) -> dict:
    logging.getLogger("blockbed.qcow2").setLevel(logging.CRITICAL)
    rec = Recording.in_memory("qcow2", 64 << 20, "writeback",
                              create_options={"cluster_size": cluster_size})
    cfg = WorkloadConfig(ops=ops, seed=seed, region_sectors=8192, max_sectors=16,
                         p_flush=0.05, p_wce_toggle=0.0)
    run_workload(rec.backend, cfg)
    oracle = rec.oracle()
    chosen = enumerate_states(rec.log, states, seed)
    best = None
    for _ in range(reps):
        res = Checker(rec.base, rec.log, oracle, "qcow2", seed).run(chosen)
        if best is None or res.states_per_second > best.states_per_second:
            best = res
    assert best is not None
    return {"image_mib": 64, "cluster_size": cluster_size, "workload_ops": ops,
            "host_ops": len(rec.log), "durable_writes": oracle.durable_count(),
            "states": best.states_checked, "violations": len(best.violations),
            "full_checks": best.full_checks, "seconds": round(best.seconds, 3),
            "states_per_second": round(best.states_per_second, 1), "target": TARGET}


def bench_guest(states: int, ops: int, reps: int, seed: int, cluster_size: int) -> dict:
    """The same measurement on a recorded flushtest run (virtio, qd=4)."""
    import shutil
    import tempfile
    from blockbed.crashrun.crashtest import DEFAULT_KERNEL
    from blockbed.block.crash.runlog import load_run
    from blockbed.crashrun.record import record_guest_run
    from blockbed.block.registry import get_format
    logging.getLogger("blockbed.qcow2").setLevel(logging.CRITICAL)
    tmp = tempfile.mkdtemp(prefix="crash-bench-")
    try:
        img = f"{tmp}/disk.qcow2"
        get_format("qcow2").create(img, 64 << 20, {"cluster_size": cluster_size})
        record_guest_run(f"file={img},format=qcow2,if=virtio,cache=writeback", str(DEFAULT_KERNEL),
                         f"dev=virtio seed={seed} ops={ops} qd=4 region=8192", f"{tmp}/run")
        run = load_run(f"{tmp}/run")
        oracle, _ = run.oracle()
        chosen = enumerate_states(run.log, states, seed)
        best = None
        for _ in range(reps):
            res = Checker(run.base, run.log, oracle, "qcow2", seed).run(chosen)
            if best is None or res.states_per_second > best.states_per_second:
                best = res
        assert best is not None
        return {"image_mib": 64, "cluster_size": cluster_size, "workload_ops": ops,
                "host_ops": len(run.log), "durable_writes": oracle.durable_count(),
                "states": best.states_checked, "violations": len(best.violations),
                "full_checks": best.full_checks, "seconds": round(best.seconds, 3),
                "states_per_second": round(best.states_per_second, 1), "target": TARGET,
                "workload": "flushtest on virtio"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=3000)
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cluster-size", type=int, default=65536)
    ap.add_argument("--guest", action="store_true", help="record flushtest on virtio instead")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 below the target")
    a = ap.parse_args()
    r = (bench_guest if a.guest else bench)(a.states, a.ops, a.reps, a.seed, a.cluster_size)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"crash states: {r['states']} on a {r['image_mib']} MiB qcow2 "
              f"({r['cluster_size']} B clusters), {r['host_ops']} host ops, "
              f"{r['durable_writes']} durable writes: {r['states_per_second']:.0f} states/s "
              f"({r['full_checks']} full checks, {r['violations']} violations; "
              f"target >= {TARGET:.0f})")
    if r["violations"]:
        print("crash_bench: the workload on a correct stack showed violations", file=sys.stderr)
        return 1
    return 1 if a.check and r["states_per_second"] < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
