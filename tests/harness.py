"""The differential harness: run one guest ELF under QEMU and under blockbed.

Both runs get the same kernel, command line and (copies of the) disk images;
the caller compares the transcripts line by line after dropping the lines
that may legitimately differ (say which and why at the call site), and
compares the disks with ``qemu-img compare``.

QEMU's isa-debug-exit makes the process exit with ``value*2+1``;
:func:`run_qemu` decodes that back to the guest's value so both results have
the same ``status``.  A QEMU exit status of 0 means the guest never wrote to
debug-exit (QEMU shut down some other way) and is reported as ``None``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class GuestRun:
    status: int | None   # the guest's debug-exit value (None: it never wrote one)
    transcript: str      # the serial output
    stderr: str
    raw_status: int      # the process exit status as the tool returned it

    def lines(self) -> list[str]:
        return [ln.rstrip("\r") for ln in self.transcript.splitlines()]


def run_qemu(elf: Path | str, append: str = "", extra: list[str] | None = None,
             memory_mib: int = 256, timeout: float = 120.0) -> GuestRun:
    """Boot ``elf`` under qemu-system-x86_64 (TCG, pc machine) with debug-exit on 0xF4."""
    with tempfile.TemporaryDirectory() as tmp:
        serial = Path(tmp) / "serial.txt"
        argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", str(memory_mib),
                "-display", "none", "-vga", "none", "-no-reboot", "-nodefaults",
                "-serial", f"file:{serial}",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                "-kernel", str(elf)]
        if append:
            argv += ["-append", append]
        argv += extra or []
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            raise AssertionError(f"QEMU did not finish in {timeout} s; serial so far:\n{text}") from exc
        text = serial.read_text(errors="replace") if serial.exists() else ""
    rc = proc.returncode
    status = (rc - 1) // 2 if rc > 0 and rc % 2 == 1 else None
    return GuestRun(status, text, proc.stderr, rc)


def run_blockbed(elf: Path | str, append: str = "", drives: list[str] | None = None,
                 memory_mib: int = 256, timeout: float = 120.0, extra: list[str] | None = None) -> GuestRun:
    """Boot ``elf`` with ``blockbed run`` in a subprocess (the CLI users run)."""
    argv = [sys.executable, "-m", "blockbed", "run", "--kernel", str(elf), "--memory", str(memory_mib),
            "--timeout", str(timeout)]
    if append:
        argv += ["--append", append]
    for d in drives or []:
        argv += ["--drive", d]
    argv += extra or []
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                          stdin=subprocess.DEVNULL, env=env)
    rc = proc.returncode
    status = rc if rc < 120 else None
    return GuestRun(status, proc.stdout, proc.stderr, rc)


def assert_same_run(qemu: GuestRun, ours: GuestRun) -> None:
    """Same exit status and the same transcript, line for line."""
    assert ours.status == qemu.status, \
        f"exit status: qemu {qemu.status}, blockbed {ours.status}\n{ours.stderr}"
    assert ours.lines() == qemu.lines(), (
        "transcripts differ\n--- qemu\n" + qemu.transcript + "\n--- blockbed\n" + ours.transcript
        + "\n" + ours.stderr)


def assert_same_disk(qemu_image: Path | str, our_image: Path | str, fmt: str = "raw") -> None:
    """``qemu-img compare`` finds the two images' guest-visible contents identical."""
    proc = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", fmt, str(qemu_image), str(our_image)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
