#!/usr/bin/env python3
"""Guest block I/O per controller: blockbed vs qemu-system-x86_64 (TCG), same image.

The ``bench`` guest (guests/programs/bench.c) runs each workload on both
emulators against copies of one raw image:

- virtio-blk: 64 KiB sequential read and write, queue depth 1 and 32;
  4 KiB random read, queue depth 1 and 32;
- AHCI without NCQ (DMA) and with NCQ, IDE bus-master DMA, IDE PIO and the
  LSI 53C895A (queue depth 1, its driver's depth): 64 KiB sequential reads,
  and 4 KiB random reads to show exits per 4 KiB request.

Timing is taken on the host from the serial output: the guest prints
``bench: begin`` right before its first request and ``bench: end`` after its
last completion; the host timestamps those lines as they arrive (QEMU:
``-serial stdio`` read line by line; blockbed: the machine's serial echo
callback), so boot and set-up are excluded on both sides.  For blockbed the
exits (port I/O + MMIO) between the two lines are counted too and divided by
the number of requests; QEMU cannot report that.

The guest driver polls with EVENT_IDX (its default).  Each workload is run
``--reps`` times per emulator, alternating, and the best run of each side is
kept (the run least disturbed by other load on a shared machine).

Targets (issue 5): virtio-blk 64 KiB sequential throughput >= 0.5x QEMU's;
at most 2 exits per request.  ``--check`` exits 1 when a target is missed.
The ATA rows have no target; they show where each controller's time goes
(IDE PIO moves a DRQ block per ``rep insw`` exit: machine/pio_string.py).

Run: ``python benchmarks/guest_io.py [--reps N] [--check]`` (needs the built
guests and qemu-system-x86_64).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blockbed.devices.attach import attach_drives  # noqa: E402
from blockbed.machine import Machine, MachineConfig  # noqa: E402
from blockbed.machine.serial import line_echo  # noqa: E402

IMAGE_MIB = 128


@dataclass(frozen=True)
class Workload:
    name: str
    mode: str
    bs: int
    qd: int
    total: int
    interface: str = "virtio"     # the --drive if= value
    guest_args: str = ""          # driver options for the bench guest

    @property
    def dev(self) -> str:
        return self.interface


# QEMU command-line pieces per interface (the drive is always id d0).
QEMU_DEVICE = {
    "virtio": ["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"],
    "ahci": ["-device", "ahci,id=a", "-device", "ide-hd,drive=d0,bus=a.0"],
    "ide": ["-device", "ide-hd,drive=d0,bus=ide.0"],
    "lsi": ["-device", "lsi53c895a,id=s", "-device", "scsi-hd,drive=d0,bus=s.0"],
}

WORKLOADS = [
    Workload("virtio seqread 64K qd1", "seqread", 65536, 1, 256 << 20),
    Workload("virtio seqread 64K qd32", "seqread", 65536, 32, 256 << 20),
    Workload("virtio seqwrite 64K qd1", "seqwrite", 65536, 1, 256 << 20),
    Workload("virtio seqwrite 64K qd32", "seqwrite", 65536, 32, 256 << 20),
    Workload("virtio randread 4K qd1", "randread", 4096, 1, 16 << 20),
    Workload("virtio randread 4K qd32", "randread", 4096, 32, 16 << 20),
    Workload("ahci-dma seqread 64K qd1", "seqread", 65536, 1, 64 << 20, "ahci", "ahci_ncq=0"),
    Workload("ahci-dma randread 4K qd1", "randread", 4096, 1, 8 << 20, "ahci", "ahci_ncq=0"),
    Workload("ahci-ncq seqread 64K qd32", "seqread", 65536, 32, 64 << 20, "ahci"),
    Workload("ahci-ncq randread 4K qd32", "randread", 4096, 32, 8 << 20, "ahci"),
    Workload("ide-bmdma seqread 64K qd1", "seqread", 65536, 1, 64 << 20, "ide"),
    Workload("ide-bmdma randread 4K qd1", "randread", 4096, 1, 8 << 20, "ide"),
    Workload("ide-pio seqread 64K qd1", "seqread", 65536, 1, 2 << 20, "ide", "ide_dma=0"),
    Workload("ide-pio randread 4K qd1", "randread", 4096, 1, 1 << 20, "ide", "ide_dma=0"),
    Workload("lsi seqread 64K qd1", "seqread", 65536, 1, 64 << 20, "lsi"),
    Workload("lsi seqwrite 64K qd1", "seqwrite", 65536, 1, 64 << 20, "lsi"),
    Workload("lsi randread 4K qd1", "randread", 4096, 1, 8 << 20, "lsi"),
]


@dataclass
class Result:
    seconds: float
    requests: int
    nbytes: int
    exits: int | None = None

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6

    @property
    def iops(self) -> float:
        return self.requests / self.seconds

    @property
    def exits_per_req(self) -> float | None:
        return None if self.exits is None else self.exits / self.requests


def _append(w: Workload) -> str:
    extra = f" {w.guest_args}" if w.guest_args else ""
    return f"dev={w.dev} mode={w.mode} bs={w.bs} qd={w.qd} total={w.total} span={64 << 20}{extra}"


def run_blockbed(elf: Path, image: Path, append: str, nreq: int, nbytes: int,
                 interface: str = "virtio") -> Result:
    marks: dict[str, tuple[float, int]] = {}
    line_start: list[tuple[float, int]] = [(0.0, 0)]
    machine: Machine

    def exits() -> int:
        e = machine.cpu.exits
        return e.pio + e.mmio

    def on_line_start() -> None:
        line_start[0] = (time.perf_counter(), exits() - 1)  # minus this byte's own exit

    def on_line(text: str) -> None:
        if text == "bench: begin":
            marks["begin"] = (time.perf_counter(), exits())
        elif text == "bench: end":
            marks["end"] = line_start[0]

    machine = Machine(MachineConfig(memory_mib=256, timeout_s=600,
                                    echo_serial=line_echo(on_line, on_line_start)))
    try:
        attach_drives(machine, [f"file={image},format=raw,if={interface},cache=writeback"])
        machine.load_kernel(str(elf), append)
        res = machine.run()
    finally:
        machine.close()
    if res.exit_code != 0 or "begin" not in marks or "end" not in marks:
        raise RuntimeError(f"blockbed bench failed: {res.reason}\n{res.transcript}")
    (t0, e0), (t1, e1) = marks["begin"], marks["end"]
    return Result(t1 - t0, nreq, nbytes, e1 - e0)


def run_qemu(elf: Path, image: Path, append: str, nreq: int, nbytes: int,
             interface: str = "virtio") -> Result:
    argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256",
            "-display", "none", "-vga", "none", "-no-reboot", "-nodefaults",
            "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-drive", f"file={image},if=none,id=d0,format=raw,cache=writeback",
            *QEMU_DEVICE[interface],
            "-kernel", str(elf), "-append", append]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    marks: dict[str, float] = {}
    out = []
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        now = time.perf_counter()
        text = raw.decode(errors="replace").rstrip("\r\n")
        out.append(text)
        if text in ("bench: begin", "bench: end"):
            marks[text.split()[1]] = now
    rc = proc.wait(timeout=600)
    if rc != 1 or len(marks) != 2:
        raise RuntimeError(f"QEMU bench failed (status {rc}):\n" + "\n".join(out)
                           + proc.stderr.read().decode(errors="replace"))
    return Result(marks["end"] - marks["begin"], nreq, nbytes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--only", default=None, help="run only workloads whose name contains this")
    args = ap.parse_args()
    elf = REPO / "guests" / "build" / "bench.elf"
    if not elf.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "guests")], check=True)
    if not shutil.which("qemu-system-x86_64"):
        print("qemu-system-x86_64 is not installed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="guest_io."))
    try:
        base = tmp / "base.img"
        with open(base, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(IMAGE_MIB):
                f.write(chunk)
        ours_img, qemu_img = tmp / "ours.img", tmp / "qemu.img"
        shutil.copy(base, ours_img)
        shutil.copy(base, qemu_img)
        print(f"{'workload':<27} {'blockbed MB/s':>13} {'IOPS':>8} {'exits/req':>9} "
              f"{'QEMU MB/s':>10} {'IOPS':>8} {'ratio':>6}")
        failed = []
        for w in WORKLOADS:
            if args.only and args.only not in w.name:
                continue
            nreq = w.total // w.bs
            append = _append(w)
            ours: list[Result] = []
            theirs: list[Result] = []
            for _ in range(args.reps):
                ours.append(run_blockbed(elf, ours_img, append, nreq, w.total, w.interface))
                theirs.append(run_qemu(elf, qemu_img, append, nreq, w.total, w.interface))
            o = min(ours, key=lambda r: r.seconds)
            q = min(theirs, key=lambda r: r.seconds)
            ratio = o.mbps / q.mbps
            print(f"{w.name:<27} {o.mbps:>13.1f} {o.iops:>8.0f} {o.exits_per_req:>9.2f} "
                  f"{q.mbps:>10.1f} {q.iops:>8.0f} {ratio:>5.2f}x", flush=True)
            if w.interface != "virtio":
                continue
            if w.mode.startswith("seq") and w.bs == 65536 and ratio < 0.5:
                failed.append(f"{w.name}: {ratio:.2f}x QEMU < 0.5x")
            if o.exits_per_req is not None and o.exits_per_req > 2:
                failed.append(f"{w.name}: {o.exits_per_req:.2f} exits/request > 2")
        print("targets: 64 KiB sequential >= 0.5x QEMU; <= 2 exits/request (polling, EVENT_IDX)")
        for f in failed:
            print(f"MISSED: {f}")
        if not failed:
            print("all targets met")
        return 1 if failed and args.check else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
