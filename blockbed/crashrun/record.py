"""Record a guest run for crash checking: boot the guest on a copy of the image with the
block layer's request log and the host write log on, and save the run directory
(:mod:`blockbed.block.crash.runlog` describes it and loads it back).

This drives the machine and a device model, so it sits above ``devices/``; the
crash engine below it (``block/crash/``) only reads what a run produced.
The guest runs on a private copy of the image (``work.img``): crashtest never
modifies the image it was given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..block.crash.faults import Faults, FaultyBackend, split_faults
from ..block.crash.runlog import MAX_IMAGE_FILE, RUN_VERSION, copy_quiescent, save_requests
from ..block.crash.timeline import CorrelatedRequestLog
from ..block.drivespec import DriveSpec, DriveSpecError, open_drive, parse_drive_spec
from ..block.logwrites import LogWritesDriver
from ..devices.attach import controller_module
from ..machine import Machine, MachineConfig, RunResult
from ..machine.boot import BootError


def boot_logged(spec: DriveSpec, kernel: str, append: str, *, initrd: str | None = None,
                faults: Faults | None = None, request_log=None,
                holder: dict | None = None, seed: int = 0, timeout: float = 120.0,
                memory_mib: int = 256, echo=None) -> RunResult:
    """Boot ``kernel`` with the one drive ``spec`` names (its ``log_writes`` set), run it
    to the end and close the machine.  The log-writes node is put in ``holder["lw"]``
    as soon as the drive is open, so callbacks during the run (the request log, the
    serial echo) can sample its position.  ValueError (one line) for a bad drive or
    kernel."""
    holder = {} if holder is None else holder
    module = controller_module(spec.interface)
    try:
        machine = Machine(MachineConfig(memory_mib=memory_mib, seed=seed, timeout_s=timeout,
                                        echo_serial=echo))
    except ValueError as e:
        raise ValueError(str(e)) from None
    try:
        try:
            backend = open_drive(spec, request_log=False if request_log is None else request_log,
                                 name="drive0")
        except DriveSpecError as e:
            raise ValueError(str(e)) from None
        lw = backend.find_node(LogWritesDriver)
        if lw is None:
            raise ValueError("the block layer did not insert the log-writes filter")
        holder["lw"] = lw
        # everything before the guest starts (opening, a WCE override) is the base
        backend.on_stop = lambda reason: machine.stop(reason.message())
        machine.on_close.append(backend.close)
        module.attach(machine, FaultyBackend(backend, faults) if faults is not None and faults.any
                      else backend, spec)
        try:
            machine.load_kernel(kernel, append, initrd)
        except BootError as e:
            raise ValueError(f"{kernel}: {e}") from None
        return machine.run()
    finally:
        machine.close()


def record_guest_run(drive: str, kernel: str, append: str, workdir: str | os.PathLike, *,
                     seed: int = 0, timeout: float = 120.0, memory_mib: int = 256,
                     echo=None) -> dict:
    """Boot ``kernel`` with one drive, recording both logs; returns run.json's content.

    Raises ValueError (one clear line) for a bad drive spec or kernel.
    """

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    block_drive, faults = split_faults(drive)
    try:
        spec = parse_drive_spec(block_drive)
    except DriveSpecError as e:
        raise ValueError(str(e)) from None
    if spec.log_writes:
        raise ValueError("drive option 'log-writes': crashtest records the write log itself; "
                         "remove it")
    if not os.path.isfile(spec.file):
        raise ValueError(f"drive file={spec.file}: No such file or directory")
    size = os.path.getsize(spec.file)
    if size > MAX_IMAGE_FILE:
        raise ValueError(f"drive file={spec.file}: {size >> 20} MiB; crashtest keeps the host "
                         f"image in memory and accepts files up to {MAX_IMAGE_FILE >> 20} MiB "
                         "(a fresh qcow2 file is tiny whatever its virtual size)")
    fmt = spec.format
    if fmt is None:
        with open(spec.file, "rb") as f:
            fmt = "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
    if fmt not in ("raw", "qcow2"):
        raise ValueError(f"crashtest supports format raw or qcow2, not {fmt}")
    copy_quiescent(spec.file, [wd / "base.img", wd / "work.img"])
    original = spec.file
    spec.file = str(wd / "work.img")
    spec.format = fmt
    spec.log_writes = str(wd / "host.log")

    holder: dict[str, LogWritesDriver] = {}
    rlog = CorrelatedRequestLog(lambda: holder["lw"].log.seq if "lw" in holder else 0)
    result = boot_logged(spec, kernel, append, faults=faults, request_log=rlog, holder=holder,
                         seed=seed, timeout=timeout, memory_mib=memory_mib, echo=echo)
    meta = {"version": RUN_VERSION, "format": fmt, "drive": drive, "image": original,
            "kernel": str(kernel), "append": append, "seed": seed,
            "exit": result.kind.value, "exit_status": result.exit_status,
            "interface": spec.interface, "cache": str(spec.cache), "faults": faults.describe()}
    save_requests(wd, rlog)
    (wd / "transcript.txt").write_text(result.transcript)
    (wd / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
    os.unlink(wd / "work.img")
    return meta
