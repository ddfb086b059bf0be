"""Boot the Linux guest under QEMU or blockbed on one controller and check the result.

Each run gets a fresh DISK_SIZE image (raw or qcow2).  A run passes when the serial console
shows `BLOCKBED-LINUX PASS <ctrl>` and the disk holds the pattern at PATTERN_OFFSET (read
from the host with qemu-img convert for qcow2).  `compare` runs both emulators on the same
controller and format and checks `qemu-img compare` / `qemu-img check`.

Usage: python -m blockbed.linuxguest.qemu [--ctrl virtio] [--fmt raw] [--blockbed] [--compare]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from blockbed.linuxguest import layout

RESULT = re.compile(r"BLOCKBED-LINUX (PASS|FAIL)\s*(.*)")
#: blockbed `--drive if=` names of each controller.
IF_NAME = {"virtio": "virtio", "ahci": "ahci", "ide": "ide", "lsi": "lsi"}


@dataclass
class RunResult:
    emulator: str
    ctrl: str
    fmt: str
    passed: bool
    line: str
    seconds: float
    console: str
    extra: str = ""


def make_disk(path: Path, fmt: str) -> None:
    path.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), str(layout.DISK_SIZE)],
                   check=True)


def qemu_device_args(ctrl: str, disk: Path, fmt: str) -> list[str]:
    """QEMU 7.2 -machine pc arguments attaching disk to the named controller."""
    drv = f"file={disk},format={fmt},if=none,id=d0,cache=none,aio=threads"
    if ctrl == "virtio":
        return ["-drive", drv, "-device", "virtio-blk-pci,drive=d0"]
    if ctrl == "ahci":
        return ["-drive", drv, "-device", "ahci,id=ahci0", "-device", "ide-hd,drive=d0,bus=ahci0.0"]
    if ctrl == "ide":
        return ["-drive", drv, "-device", "ide-hd,drive=d0,bus=ide.0"]
    if ctrl == "lsi":
        return ["-drive", drv, "-device", "lsi53c895a,id=scsi0", "-device", "scsi-hd,drive=d0,bus=scsi0.0"]
    raise ValueError(f"unknown controller {ctrl!r}; choose from {', '.join(layout.CONTROLLERS)}")


def _parse(console: str) -> tuple[bool, str]:
    m = RESULT.search(console)
    if not m:
        return False, "no BLOCKBED-LINUX line"
    return m.group(1) == "PASS", m.group(0).strip()


def run_qemu(kernel: Path, initrd: Path, ctrl: str, disk: Path, fmt: str,
             timeout: float = 300.0, trace: str | None = None) -> RunResult:
    cmd = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "512", "-nographic",
           "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", str(kernel),
           "-initrd", str(initrd),
           "-append", f"console=ttyS0 panic=-1 quiet blockbed.ctrl={ctrl}",
           *qemu_device_args(ctrl, disk, fmt)]
    if trace:
        cmd += ["-trace", trace]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    dt = time.monotonic() - t0
    ok, line = _parse(p.stdout)
    return RunResult("qemu", ctrl, fmt, ok, line, dt, p.stdout + p.stderr)


def run_blockbed(kernel: Path, initrd: Path, ctrl: str, disk: Path, fmt: str,
                 timeout: float = 1800.0, extra: tuple[str, ...] = ()) -> RunResult:
    """The same boot on blockbed's machine; ``extra``: more `blockbed run` options."""
    cmd = [sys.executable, "-m", "blockbed", "run", "--kernel", str(kernel), "--initrd", str(initrd),
           "--memory", "512", "--timeout", str(int(timeout)), *extra,
           "--append", f"console=ttyS0 panic=-1 quiet blockbed.ctrl={ctrl}",
           "--drive", f"file={disk},format={fmt},if={IF_NAME[ctrl]}"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    dt = time.monotonic() - t0
    ok, line = _parse(p.stdout)
    exits = re.search(r"exits[^\n]*", p.stdout + p.stderr)
    return RunResult("blockbed", ctrl, fmt, ok, line, dt, p.stdout + p.stderr,
                     exits.group(0) if exits else "")


def read_disk(disk: Path, fmt: str, offset: int, size: int) -> bytes:
    """size bytes at offset of the guest-visible disk (through qemu-img for qcow2)."""
    if fmt == "raw":
        with open(disk, "rb") as f:
            f.seek(offset)
            return f.read(size)
    raw = disk.with_suffix(".raw-view")
    subprocess.run(["qemu-img", "convert", "-O", "raw", "-f", fmt, str(disk), str(raw)], check=True)
    try:
        return read_disk(raw, "raw", offset, size)
    finally:
        raw.unlink()


def pattern_on_disk(disk: Path, fmt: str) -> bool:
    return read_disk(disk, fmt, layout.PATTERN_OFFSET, layout.PATTERN_SIZE) == layout.pattern()


def qcow2_check(disk: Path) -> tuple[bool, str]:
    p = subprocess.run(["qemu-img", "check", "-q", str(disk)], capture_output=True, text=True)
    return p.returncode == 0, p.stdout + p.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctrl", choices=layout.CONTROLLERS, action="append")
    ap.add_argument("--fmt", choices=("raw", "qcow2"), action="append")
    ap.add_argument("--kernel", type=Path, default=Path("build/linux/bzImage"))
    ap.add_argument("--initrd", type=Path, default=Path("build/linux/initramfs.cpio.gz"))
    ap.add_argument("--workdir", type=Path, default=Path("build/linux/runs"))
    ap.add_argument("--blockbed", action="store_true", help="also run under blockbed and compare")
    ap.add_argument("--trace", help="QEMU -trace pattern, e.g. 'virtio_blk_*' (to stderr)")
    a = ap.parse_args(argv)
    if not a.kernel.exists() or not a.initrd.exists():
        print("linux-guest: build it first with `make linux-guest`", file=sys.stderr)
        return 1
    a.workdir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for ctrl in a.ctrl or list(layout.CONTROLLERS):
        for fmt in a.fmt or ["raw", "qcow2"]:
            qd = a.workdir / f"qemu-{ctrl}.{fmt}"
            make_disk(qd, fmt)
            r = run_qemu(a.kernel, a.initrd, ctrl, qd, fmt, trace=a.trace)
            ok = r.passed and pattern_on_disk(qd, fmt)
            if fmt == "qcow2":
                ok = ok and qcow2_check(qd)[0]
            print(f"qemu     {ctrl:6} {fmt:5} {'PASS' if ok else 'FAIL'} {r.seconds:6.1f}s  {r.line}")
            if not ok:
                failed += 1
                print(r.console[-3000:])
            if a.blockbed:
                bd = a.workdir / f"blockbed-{ctrl}.{fmt}"
                make_disk(bd, fmt)
                b = run_blockbed(a.kernel, a.initrd, ctrl, bd, fmt)
                bok = b.passed and pattern_on_disk(bd, fmt)
                if fmt == "qcow2":
                    bok = bok and qcow2_check(bd)[0]
                print(f"blockbed {ctrl:6} {fmt:5} {'PASS' if bok else 'FAIL'} {b.seconds:6.1f}s "
                      f"(qemu {r.seconds:.1f}s) {b.extra} {b.line}")
                if not bok:
                    failed += 1
                    print(b.console[-2000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
