"""``blockbed crashtest``: cut the power at every moment that matters and say which promise broke.

Boots a guest (default: flushtest) with one drive, records the host write
log and the BlockBackend request log, enumerates crash states (every flush
boundary, in-order prefixes, seeded torn subsets; at most --states), checks
each in memory (image opens and checks clean; every durable write reads
back) and prints each violation with the command that replays that state.

Exit status: 0 no violation, 1 violations, 2 bad arguments or setup error.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crashtest", help="crash-consistency test of a drive (docs/crash-consistency.md)",
                       description=__doc__.splitlines()[0],
                       epilog="exit status: 0 no violations, 1 violations, 2 bad arguments")
    p.add_argument("--drive", metavar="SPEC", help="file=PATH,format=raw|qcow2,if=…,cache=… "
                   "(the image itself is not modified: the guest runs on a copy); test-only "
                   "x-ignore-flush=on / x-ignore-fua=on make the device lie about promises")
    p.add_argument("--kernel", metavar="ELF", help="guest (default guests/build/flushtest.elf)")
    p.add_argument("--append", metavar="STR", help="guest command line "
                   "(default: dev=<if> seed=<S+1> ops=200 qd=4)")
    p.add_argument("--states", type=int, default=1000, metavar="N",
                   help="check at most N crash states (default 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed for states and devices")
    p.add_argument("--qemu-check-fraction", type=float, default=0.0, metavar="F",
                   help="also check this share of qcow2 states with qemu-img check (0..1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--keep", metavar="DIR", help="record into DIR and keep it")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="guest wall-clock limit")
    p.add_argument("--replay", metavar="LOG", help="a kept run directory: check one state of it")
    p.add_argument("--state", metavar="ID", help="with --replay: the state (e.g. 3.p2, 5.r1)")
    p.add_argument("--linux", metavar="CTRL", choices=("virtio", "ahci", "ide", "lsi"),
                   help="instead of --drive: Debian's Linux on CTRL (virtio|ahci|ide|lsi) runs an "
                   "ext4 fsync workload; every crash state must fsck clean and keep each fsync'd "
                   "file (needs `make linux-guest`; docs/linux-guest.md)")
    p.add_argument("--format", default="raw", choices=("raw", "qcow2"),
                   help="with --linux: disk format (default raw)")
    p.add_argument("--cache", default="none", metavar="MODE",
                   help="with --linux: QEMU cache mode none|writeback|writethrough|directsync|unsafe")
    p.add_argument("--recorder", default="qemu", choices=("qemu", "blockbed"),
                   help="with --linux: the machine that runs the guest (default qemu: QEMU's "
                   "controllers, host writes logged with its blklogwrites driver; blockbed: "
                   "blockbed's controllers and cache modes, its logwrites filter)")
    p.set_defaults(func=main)


def _err(msg: str) -> int:
    print(f"blockbed crashtest: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    if args.replay:
        if not args.state:
            return _err("--replay needs --state ID")
        return _replay(args)
    if args.linux:
        if args.drive:
            return _err("--linux and --drive are exclusive (--linux makes its own disk)")
        return _linux(args)
    if not args.drive:
        return _err("--drive SPEC is required (or --linux CTRL, or --replay LOG --state ID)")
    if args.states < 1:
        return _err("--states must be at least 1")
    if not 0.0 <= args.qemu_check_fraction <= 1.0:
        return _err("--qemu-check-fraction must be between 0 and 1")
    from ..crashrun.crashtest import crashtest
    from ..block.crash.qemucheck import QemuImgMissing
    from ..block.crash.runlog import RunLogError
    try:
        rep = crashtest(args.drive, kernel=args.kernel, append=args.append, states=args.states,
                        seed=args.seed, qemu_fraction=args.qemu_check_fraction,
                        workdir=args.keep, keep=True if args.keep else None, timeout=args.timeout)
    except (ValueError, RunLogError, QemuImgMissing, OSError) as e:
        return _err(str(e))
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
        return 0 if rep.ok else 1
    s = rep.sweep
    hc = rep.host_counts
    if not rep.guest_config and not rep.guest_promises:
        record = "no promise record (the backend's rules alone define durability)"
    else:
        record = f"{rep.guest_promises} promises recorded" + \
            ("" if rep.guest_complete else " (record incomplete: no summary line)")
    print(f"guest: {rep.meta.get('kernel')} exited {rep.guest_exit} ({rep.meta.get('exit')}); "
          f"{record}")
    print(f"host log: {hc['write']} writes, {hc['discard']} discards, {hc['flush']} flushes; "
          f"request log: {rep.requests} requests, {rep.durable} durable writes")
    if rep.guest_promises:
        lost = sum(1 for v in rep.violations if v.kind == "disagreement")
        print(f"guest vs block layer: {rep.guest_promises} promises, "
              + ("all backed by the backend's own rules" if not lost
                 else f"{lost} of them never reached the block layer (the device lost them)"))
    print(f"crash points: {rep.epochs} flush boundaries, {rep.prefixes} in-order prefixes, "
          f"plus seeded torn subsets")
    print(f"states checked: {s.states_checked} in {s.seconds:.2f} s "
          f"({s.states_per_second:.0f} states/s; {s.full_checks} full checks)")
    if rep.qemu_checked:
        print(f"qemu-img check: {rep.qemu_checked} states, {rep.qemu_agreed} agree")
    print(f"violations: {len(rep.violations)} ({s.violating_states} violating states)")
    by_state: dict[str, list] = {}
    for v in rep.violations:
        by_state.setdefault(v.state, []).append(v)
    for v in by_state.pop("-", []):
        print(f"  [run] {v.kind}: {v.message}")
    for n, (sid, vs) in enumerate(by_state.items()):
        if n >= 20:
            print(f"  … {len(by_state) - n} more violating states (use --json for all)")
            break
        more = f" (+{len(vs) - 1} more)" if len(vs) > 1 else ""
        print(f"  [state {sid}] {vs[0].kind}: {vs[0].message}{more}")
        print(f"    replay: blockbed crashtest --replay {rep.run_dir} --state {sid}")
    print("RESULT:", "PASS" if rep.ok else "FAIL")
    return 0 if rep.ok else 1


def _linux(args: argparse.Namespace) -> int:
    from ..block.crash.fscheck import FsToolsMissing
    from ..crashrun.linux import linux_crashtest
    if args.states < 1:
        return _err("--states must be at least 1")
    states = 40 if args.states == 1000 else args.states      # 1000: the --drive default
    try:
        rep = linux_crashtest(args.linux, args.format, args.cache, states=states, seed=args.seed,
                              recorder=args.recorder, workdir=args.keep,
                              keep=True if args.keep else None, timeout=max(args.timeout, 600.0))
    except (ValueError, OSError, FsToolsMissing) as e:
        return _err(str(e))
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
        return 0 if rep.ok else 1
    hc = rep.host_counts
    print(f"guest: Linux on {rep.ctrl} ({rep.fmt}, cache={rep.cache}, recorded by {args.recorder}) "
          f"in {rep.boot_seconds:.1f} s: {rep.guest_line}")
    print(f"host log: {hc['write']} writes, {hc['discard']} discards, {hc['flush']} flushes; "
          f"{len(rep.promises)} fsync'd files")
    if rep.ready_pos is None:
        print("the guest never reached the crash workload (no 'BLOCKBED-CRASH ready' line)")
        print("RESULT: FAIL")
        return 1
    bad = rep.violating
    print(f"states checked: {len(rep.states)} in {rep.sweep_seconds:.1f} s (e2fsck + every "
          f"fsync'd file, per state); violating: {len(bad)}")
    for v in bad[:20]:
        print(f"  [state {v.state}] crash after host op {v.crash_pos}, {v.promises} files due: "
              + "; ".join(v.problems[:3]) + (f" (+{len(v.problems) - 3} more)"
                                             if len(v.problems) > 3 else ""))
    if bad:
        print(f"  run directory kept: {rep.run_dir}")
    print("RESULT:", "PASS" if rep.ok else "FAIL")
    return 0 if rep.ok else 1


def _replay(args: argparse.Namespace) -> int:
    from ..block.crash.crashtest import replay_state
    from ..block.crash.runlog import RunLogError
    from ..block.crash.states import StateIdError
    try:
        st, res, oracle = replay_state(args.replay, args.state)
    except (RunLogError, StateIdError, ValueError, OSError) as e:
        return _err(str(e))
    if args.json:
        print(json.dumps({"state": st.id, "crash_pos": st.crash_pos, "metadata_ok": res.meta.ok,
                          "violations": [v.to_json() for v in res.violations]}, indent=1))
        return 1 if res.violations else 0
    print(f"state {st.id}: epoch {st.epoch}, crash after host op {st.crash_pos} "
          f"({st.kind}); metadata {'clean' if res.meta.ok else 'CORRUPT: ' + res.meta.message}; "
          f"{res.bytes_verified} bytes of durable data read back")
    for v in res.violations:
        print(f"  {v.kind}: {v.message}")
    print("RESULT:", "PASS" if not res.violations else "FAIL")
    return 1 if res.violations else 0
