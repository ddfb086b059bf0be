#!/usr/bin/env python3
"""Linux's own drivers doing direct I/O: blockbed vs qemu-system-x86_64 (TCG).

The Linux guest (``make linux-guest``: Debian's kernel and a busybox initramfs,
docs/linux-guest.md) boots with ``blockbed.mode=bench`` on one controller and runs
four ``dd`` phases with O_DIRECT at queue depth 1 on the raw disk: 64 KiB writes and
reads (16 MiB each), 4 KiB writes and reads (4 MiB each).  Each phase sits between
``BLOCKBED-BENCH begin NAME`` and ``BLOCKBED-BENCH end NAME`` on the console; the
host timestamps those lines as they arrive (QEMU: ``-serial stdio`` read line by
line; blockbed: the machine's serial echo callback), so boot, probe and the dd
process start-up inside the guest are the same work on both sides.  For blockbed
the port+MMIO exits between the two lines are counted and divided by the dd's
block count (one request per block at O_DIRECT and queue depth 1; the driver may
split or add commands, so this is exits per dd block).

Each controller is booted ``--reps`` times per emulator, alternating, and the best
phase time of each side is kept.  Prints MB/s and the ratio against QEMU; the
target (issue 16) is >= 1.0x on every row.

Run: ``python benchmarks/linux_io.py [--ctrl virtio] [--reps 3]`` (about 45 s per
blockbed boot, 12 s per QEMU boot).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blockbed.devices.attach import attach_drives  # noqa: E402
from blockbed.linuxguest import layout  # noqa: E402
from blockbed.linuxguest.qemu import qemu_device_args  # noqa: E402
from blockbed.machine import Machine, MachineConfig  # noqa: E402
from blockbed.machine.serial import line_echo  # noqa: E402

KERNEL = REPO / "build" / "linux" / "bzImage"
INITRD = REPO / "build" / "linux" / "initramfs.cpio.gz"
#: phase name -> (block size, blocks): the loop in blockbed/linuxguest/init.sh
PHASES = {"write64k": (65536, 256), "read64k": (65536, 256),
          "write4k": (4096, 1024), "read4k": (4096, 1024)}


def _append(ctrl: str) -> str:
    return f"console=ttyS0 panic=-1 quiet blockbed.ctrl={ctrl} blockbed.mode=bench"


def _mark(text: str) -> str:
    """"begin write64k" from a console line (QEMU's first line carries the firmware's
    terminal escapes in front)."""
    return text[text.index("BLOCKBED-BENCH ") + len("BLOCKBED-BENCH "):]


def _phases(marks: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
    """(seconds, exits) per phase from begin/end marks."""
    out = {}
    for name in PHASES:
        b, e = marks.get(f"begin {name}"), marks.get(f"end {name}")
        if b is None or e is None:
            raise RuntimeError(f"phase {name} has no begin/end line")
        out[name] = (e[0] - b[0], e[1] - b[1])
    return out


def run_blockbed(ctrl: str, disk: Path) -> dict[str, tuple[float, int]]:
    marks: dict[str, tuple[float, int]] = {}
    machine: Machine

    def on_line(text: str) -> None:
        if "BLOCKBED-BENCH " in text:
            e = machine.cpu.exits
            marks[_mark(text.strip())] = (time.perf_counter(), e.pio + e.mmio)

    machine = Machine(MachineConfig(memory_mib=512, timeout_s=900, echo_serial=line_echo(on_line)))
    try:
        # cache=none as qemu_device_args gives QEMU: O_DIRECT on the host side too
        attach_drives(machine, [f"file={disk},format=raw,if={ctrl},cache=none"])
        machine.load_kernel(str(KERNEL), _append(ctrl), str(INITRD))
        res = machine.run()
    finally:
        machine.close()
    if "PASS bench" not in res.transcript:
        raise RuntimeError(f"blockbed: {res.reason}\n{res.transcript[-3000:]}")
    return _phases(marks)


def run_qemu(ctrl: str, disk: Path) -> dict[str, tuple[float, int]]:
    argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "512", "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", str(KERNEL),
            "-initrd", str(INITRD), "-append", _append(ctrl), *qemu_device_args(ctrl, disk, "raw")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    marks: dict[str, tuple[float, int]] = {}
    out = []
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        now = time.perf_counter()
        text = raw.decode(errors="replace").strip()
        out.append(text)
        if "BLOCKBED-BENCH " in text:
            marks[_mark(text)] = (now, 0)
    proc.wait(timeout=900)
    if not any("PASS bench" in t for t in out):
        raise RuntimeError("QEMU:\n" + "\n".join(out[-60:]))
    return _phases(marks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctrl", choices=layout.CONTROLLERS, action="append")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    if not KERNEL.exists() or not INITRD.exists():
        print("build the Linux guest first: make linux-guest", file=sys.stderr)
        return 2
    if not shutil.which("qemu-system-x86_64"):
        print("qemu-system-x86_64 is not installed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="linux_io."))
    try:
        print(f"{'controller':<10} {'phase':<9} {'blockbed MB/s':>13} {'exits/block':>11} "
              f"{'QEMU MB/s':>10} {'ratio':>6}")
        for ctrl in args.ctrl or list(layout.CONTROLLERS):
            ours: dict[str, list[tuple[float, int]]] = {p: [] for p in PHASES}
            theirs: dict[str, list[tuple[float, int]]] = {p: [] for p in PHASES}
            for _ in range(args.reps):
                for runner, into in ((run_blockbed, ours), (run_qemu, theirs)):
                    disk = tmp / f"{ctrl}.raw"
                    with open(disk, "wb") as f:
                        f.truncate(layout.DISK_SIZE)
                    for name, v in runner(ctrl, disk).items():
                        into[name].append(v)
            for name, (bs, n) in PHASES.items():
                o = min(ours[name])
                q = min(theirs[name])
                mb = bs * n / 1e6
                print(f"{ctrl:<10} {name:<9} {mb / o[0]:>13.1f} {o[1] / n:>11.1f} "
                      f"{mb / q[0]:>10.1f} {q[0] / o[0]:>5.2f}x", flush=True)
        print("target (issue 16): >= 1.0x QEMU TCG on every row; best of --reps boots")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
