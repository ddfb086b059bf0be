"""Crash conformance with a real filesystem: the Linux guest's ext4 under power cuts.

``blockbed crashtest --linux`` boots Debian's kernel with the crash workload of
the Linux guest's /init (``blockbed.mode=crash``: a fresh ext4 mounted
``data=ordered``, then files written and fsync'd one by one, each fsync
announced on the console; docs/linux-guest.md), records every host write in
completion order, and then, for crash states at every flush boundary, in-order
prefixes and torn subsets after the filesystem was made (:mod:`blockbed.block.crash.states`),
checks with :mod:`blockbed.block.crash.fscheck` that the filesystem fscks clean
and every file whose fsync had returned reads back exactly.  CrashMonkey's idea,
through an emulated controller and a QEMU cache mode; ``cache=unsafe`` drops the
flushes, so it must fail.

Recorders: ``qemu`` runs the guest under qemu-system-x86_64 with QEMU's
``blklogwrites`` driver between the format driver and the file (QEMU's own
controller models and cache modes: the reference).  ``blockbed`` runs the same
kernel and initramfs on blockbed's machine, through its controller models, cache
modes and ``logwrites`` filter (:func:`.record.boot_logged`); the serial lines are
stamped with the log's position in the same callback that receives them, so a
promise's position is exact rather than read after the line arrived.  Both feed
the same sweep.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..block.crash.checker import open_view
from ..block.crash.dmlog import complete_entries, read_dm_log
from ..block.crash.fscheck import FsPromise, check_filesystem, parse_promises, tools
from ..block.crash.hostlog import HostLog
from ..block.drivespec import parse_drive_spec
from ..block.logwrites import read_log
from ..block.registry import create_image
from ..block.crash.overlay import WorkingImage
from ..block.crash.states import CrashState, enumerate_states, state_pieces
from ..linuxguest import layout

REPO = Path(__file__).resolve().parents[2]
KERNEL = REPO / "build" / "linux" / "bzImage"
INITRD = REPO / "build" / "linux" / "initramfs.cpio.gz"
CACHES = ("none", "writeback", "writethrough", "directsync", "unsafe")
QEMU_DEVICE = {
    "virtio": ["-device", "virtio-blk-pci,drive=d0"],
    "ahci": ["-device", "ahci,id=ahci0", "-device", "ide-hd,drive=d0,bus=ahci0.0"],
    "ide": ["-device", "ide-hd,drive=d0,bus=ide.0"],
    "lsi": ["-device", "lsi53c895a,id=scsi0", "-device", "scsi-hd,drive=d0,bus=scsi0.0"],
}


@dataclass
class StateVerdict:
    state: str
    crash_pos: int
    promises: int
    problems: list[str]


@dataclass
class LinuxCrashReport:
    ctrl: str
    fmt: str
    cache: str
    run_dir: Path
    guest_line: str
    boot_seconds: float
    host_counts: dict[str, int]
    ready_pos: int | None
    promises: list[FsPromise]
    states: list[StateVerdict] = field(default_factory=list)
    sweep_seconds: float = 0.0

    @property
    def violating(self) -> list[StateVerdict]:
        return [s for s in self.states if s.problems]

    @property
    def ok(self) -> bool:
        return self.ready_pos is not None and bool(self.states) and not self.violating

    def to_json(self) -> dict:
        return {"ctrl": self.ctrl, "format": self.fmt, "cache": self.cache,
                "run_dir": str(self.run_dir), "guest": self.guest_line,
                "boot_seconds": round(self.boot_seconds, 2), "host_ops": self.host_counts,
                "fsync_promises": len(self.promises), "states_checked": len(self.states),
                "violating_states": len(self.violating),
                "violations": [{"state": s.state, "crash_pos": s.crash_pos, "problems": s.problems}
                               for s in self.violating[:50]],
                "sweep_seconds": round(self.sweep_seconds, 2), "ok": self.ok}


def record_qemu(ctrl: str, fmt: str, cache: str, wd: Path, *, kernel: Path = KERNEL,
                initrd: Path = INITRD, timeout: float = 600.0) -> tuple[list[tuple[int, str]], float]:
    """Run the crash workload under QEMU with blklogwrites; returns the console lines, each
    with the number of log entries complete when it arrived, and the run's seconds."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu or not shutil.which("qemu-img"):
        raise ValueError("the qemu recorder needs qemu-system-x86_64 and qemu-img "
                         "(Debian packages qemu-system-x86, qemu-utils)")
    for f in (kernel, initrd):
        if not f.exists():
            raise ValueError(f"{f}: missing; build the Linux guest with `make linux-guest`")
    base, work, log = wd / "base.img", wd / "work.img", wd / "host.dmlog"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(base), str(layout.DISK_SIZE)],
                   check=True)
    shutil.copyfile(base, work)
    log.write_bytes(b"")
    # blklogwrites sits between the format driver and the file: the log holds host writes.
    drive = (f"if=none,id=d0,format={fmt},cache={cache},aio=threads,"
             f"file.driver=blklogwrites,file.file.driver=file,file.file.filename={work},"
             f"file.log.driver=file,file.log.filename={log},file.log-super-update-interval=1")
    cmd = [qemu, "-machine", "pc", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
           "-nodefaults", "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", f"console=ttyS0 panic=-1 quiet blockbed.ctrl={ctrl} blockbed.mode=crash",
           "-drive", drive, *QEMU_DEVICE[ctrl]]
    lines: list[tuple[int, str]] = []
    t0 = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as p:
        try:
            assert p.stdout is not None
            for line in p.stdout:
                # Read the log's length only after the line arrived: the fsync it announces
                # completed before, so its entries are all in (the position is never early).
                pos = complete_entries(str(log)) if "BLOCKBED-" in line else -1
                lines.append((pos, line.rstrip("\n")))
                if time.monotonic() - t0 > timeout:
                    p.kill()
                    raise ValueError(f"the Linux guest did not finish in {timeout:.0f} s")
        finally:
            if p.poll() is None:
                p.kill()
    seconds = time.monotonic() - t0
    work.unlink()
    (wd / "console.json").write_text(json.dumps(lines))
    (wd / "run.json").write_text(json.dumps({"recorder": "qemu", "ctrl": ctrl, "format": fmt,
                                             "cache": cache, "seconds": seconds}, indent=1))
    return lines, seconds


def record_blockbed(ctrl: str, fmt: str, cache: str, wd: Path, *, kernel: Path = KERNEL,
                    initrd: Path = INITRD, timeout: float = 600.0
                    ) -> tuple[list[tuple[int, str]], float]:
    """Run the crash workload on blockbed's machine with the ``logwrites`` filter below
    the format driver; returns the console lines, each stamped with the number of log
    entries at the moment its newline arrived, and the run's seconds."""
    from .record import boot_logged
    from ..machine.serial import line_echo
    for f in (kernel, initrd):
        if not f.exists():
            raise ValueError(f"{f}: missing; build the Linux guest with `make linux-guest`")
    base, work = wd / "base.img", wd / "work.img"
    create_image(str(base), fmt, layout.DISK_SIZE)
    shutil.copyfile(base, work)
    spec = parse_drive_spec(f"file={work},format={fmt},if={ctrl},cache={cache}")
    spec.log_writes = str(wd / "host.log")
    holder: dict = {}
    lines: list[tuple[int, str]] = []

    def on_line(line: str) -> None:
        # The guest prints an fsync's line after the fsync returned, and the flush
        # below it completed before the guest could run on: the position is exact.
        pos = holder["lw"].log.seq if "BLOCKBED-" in line and "lw" in holder else -1
        lines.append((pos, line))

    t0 = time.monotonic()
    result = boot_logged(spec, str(kernel),
                         f"console=ttyS0 panic=-1 quiet blockbed.ctrl={ctrl} blockbed.mode=crash",
                         initrd=str(initrd), holder=holder, timeout=timeout, memory_mib=512,
                         echo=(echo := line_echo(on_line)))
    seconds = time.monotonic() - t0
    if echo.tail:
        lines.append((-1, echo.tail))
    work.unlink()
    if not any("BLOCKBED-LINUX" in l for _, l in lines):
        raise ValueError(f"the Linux guest did not finish on blockbed: {result.reason}")
    (wd / "console.json").write_text(json.dumps(lines))
    (wd / "run.json").write_text(json.dumps({"recorder": "blockbed", "ctrl": ctrl, "format": fmt,
                                             "cache": cache, "seconds": seconds,
                                             "exit": result.kind.value, "exits": result.exits},
                                            indent=1))
    return lines, seconds


def host_log(wd: Path) -> HostLog:
    """The recorded host writes: QEMU's dm-log-writes file or blockbed's own log."""
    if (wd / "host.log").exists():
        return HostLog.from_logwrites(read_log(str(wd / "host.log")))
    return read_dm_log(str(wd / "host.dmlog"))


def _states(log: HostLog, ready: int, limit: int, seed: int) -> list[CrashState]:
    """States after the filesystem was made durable: every flush boundary, then prefixes and
    torn subsets sampled evenly, at most ``limit`` (boundaries first)."""
    every = [s for s in enumerate_states(log, None, seed) if s.crash_pos >= ready]
    bounds = [s for s in every if s.prefix == 0]
    rest = [s for s in every if s.prefix != 0]
    if len(bounds) >= limit:
        step = len(bounds) / limit
        chosen = [bounds[int(i * step)] for i in range(limit)]
    else:
        room = limit - len(bounds)
        rng = random.Random(seed)
        chosen = bounds + (rest if len(rest) <= room else rng.sample(rest, room))
    chosen.sort(key=lambda s: (s.base, s.crash_pos, s.prefix is None, s.subset or 0, s.prefix or 0))
    return chosen


def sweep(wd: Path, fmt: str, lines: list[tuple[int, str]], limit: int, seed: int
          ) -> tuple[int | None, list[FsPromise], list[StateVerdict], HostLog]:
    log = host_log(wd)
    ready, promises = parse_promises(lines)
    if ready is None:
        return None, promises, [], log
    expected = layout.pattern()
    work = WorkingImage((wd / "base.img").read_bytes(), log)
    verdicts: list[StateVerdict] = []
    for st in _states(log, ready, limit, seed):
        work.advance(st.base)
        due = [p for p in promises if p.pos <= st.crash_pos]
        with work.overlay(state_pieces(log, st, seed)) as node:
            try:
                view = open_view(node, fmt)
                disk = bytearray(layout.FS_SIZE)
                view.readv(0, [memoryview(disk)])
            except Exception as e:          # a crash state is hostile input for our driver
                verdicts.append(StateVerdict(st.id, st.crash_pos, len(due),
                                             [f"the image does not open or read: {e}"]))
                continue
        problems = check_filesystem(disk, layout.FS_SIZE, due, expected)
        verdicts.append(StateVerdict(st.id, st.crash_pos, len(due), problems))
    return ready, promises, verdicts, log


def linux_crashtest(ctrl: str = "virtio", fmt: str = "raw", cache: str = "none", *,
                    states: int = 40, seed: int = 0, recorder: str = "qemu",
                    workdir: str | Path | None = None, keep: bool | None = None,
                    timeout: float = 600.0) -> LinuxCrashReport:
    if ctrl not in QEMU_DEVICE:
        raise ValueError(f"unknown controller {ctrl!r}; choose from {', '.join(QEMU_DEVICE)}")
    if fmt not in ("raw", "qcow2"):
        raise ValueError(f"format {fmt!r}: the Linux crash test supports raw or qcow2")
    if cache not in CACHES:
        raise ValueError(f"cache {cache!r}: choose from {', '.join(CACHES)}")
    if recorder not in ("qemu", "blockbed"):
        raise ValueError(f"recorder {recorder!r}: choose qemu or blockbed")
    tools()
    made = workdir is None
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="blockbed-linuxcrash-"))
    wd.mkdir(parents=True, exist_ok=True)
    try:
        record = record_qemu if recorder == "qemu" else record_blockbed
        lines, secs = record(ctrl, fmt, cache, wd, timeout=timeout)
        t0 = time.monotonic()
        ready, promises, verdicts, log = sweep(wd, fmt, lines, states, seed)
        guest = next((l for _, l in lines if "BLOCKBED-LINUX" in l), "no BLOCKBED-LINUX line")
        rep = LinuxCrashReport(ctrl, fmt, cache, wd, guest.strip(), secs, log.counts(), ready,
                               promises, verdicts, time.monotonic() - t0)
    except BaseException:
        if made and not keep:
            shutil.rmtree(wd, ignore_errors=True)
        raise
    if made and (keep is False or (keep is None and rep.ok)):
        shutil.rmtree(wd, ignore_errors=True)
    return rep
