"""Record a guest run for crash checking, save it, load it back (for ``--replay``).

A run directory holds everything one sweep (or the replay of one state)
needs, so a violation can be reproduced later without booting the guest::

    run.json        format, drive spec, kernel, append, seed, guest exit
    base.img        the host image before the run (the crash states' base)
    host.log        the host write log (blockbed.block.logwrites format)
    requests.json   the BlockBackend request log (no data) + host positions
    requests.bin    the written data, referenced from requests.json
    transcript.txt  the guest's serial output (its record of promises)

Recording a guest run drives the machine and a device model, so it lives
above the block layer, in :mod:`blockbed.crashrun.record`; this module only
saves and loads what a run produced.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..backend import RequestLogEntry
from ..driver import BlockError
from ..locking import ImageLock, Permissions
from .guestrecord import GuestRecord, attach
from .hostlog import HostLog
from .oracle import Oracle
from .timeline import CorrelatedRequestLog

RUN_VERSION = 1
MAX_IMAGE_FILE = 2 << 30       # the base image and every crash state live in memory
_ENTRY_FIELDS = ("id", "kind", "offset", "length", "fua", "wce_at_submit", "submit_seq", "host_fua",
                 "may_unmap", "dropped", "wce_at_complete", "complete_seq", "error", "result")


class RunLogError(ValueError):
    """A run directory is missing, incomplete or damaged."""


@dataclass
class LoadedRun:
    path: Path
    meta: dict
    base: bytes
    log: HostLog
    entries: list[RequestLogEntry]
    positions: list[int]
    transcript: str
    record: GuestRecord = field(default_factory=GuestRecord)

    @property
    def fmt(self) -> str:
        return self.meta["format"]

    def oracle(self) -> tuple[Oracle, object]:
        """The oracle with the guest's promises attached (and the attach result)."""
        o = Oracle.from_request_log(self.entries, self.positions, len(self.log))
        return o, attach(o, self.record)


def save_requests(wd: Path, rlog: CorrelatedRequestLog) -> None:
    rows = []
    with open(wd / "requests.bin", "wb") as blob:
        pos = 0
        for e in rlog.entries:
            row = {k: getattr(e, k) for k in _ENTRY_FIELDS}
            if e.data is not None:
                blob.write(e.data)
                row["data"] = [pos, len(e.data)]
                pos += len(e.data)
            rows.append(row)
    (wd / "requests.json").write_text(json.dumps({"positions": rlog.positions, "entries": rows}))


def load_run(path: str | os.PathLike) -> LoadedRun:
    """Load a run directory (or its run.json); RunLogError on anything wrong."""
    from ..logwrites import LogFormatError, read_log
    p = Path(path)
    if p.is_file() and p.name == "run.json":
        p = p.parent
    try:
        meta = json.loads((p / "run.json").read_text())
        if meta.get("version") != RUN_VERSION or meta.get("format") not in ("raw", "qcow2"):
            raise RunLogError(f"{p}: unsupported run.json (version {meta.get('version')})")
        base = (p / "base.img").read_bytes()
        req = json.loads((p / "requests.json").read_text())
        blob = (p / "requests.bin").read_bytes()
        entries = []
        for row in req["entries"]:
            data = None
            if "data" in row:
                off, n = row["data"]
                if off < 0 or off + n > len(blob):
                    raise RunLogError(f"{p}: requests.bin is shorter than requests.json says")
                data = blob[off:off + n]
            entries.append(RequestLogEntry(**{k: row[k] for k in _ENTRY_FIELDS}, data=data))
        positions = [int(x) for x in req["positions"]]
        log = HostLog.from_logwrites(read_log(str(p / "host.log")))
        transcript = (p / "transcript.txt").read_text()
    except FileNotFoundError as e:
        raise RunLogError(f"{p}: not a crashtest run directory ({e.filename} is missing)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, LogFormatError) as e:
        if isinstance(e, RunLogError):
            raise
        raise RunLogError(f"{p}: damaged run directory: {e}") from None
    if any(pos > len(log) for pos in positions):
        raise RunLogError(f"{p}: request log refers past the end of host.log")
    return LoadedRun(p, meta, base, log, entries, positions, transcript,
                     GuestRecord.parse(transcript))


def copy_quiescent(src: str, dsts: list[Path]) -> None:
    """Copy the image while holding QEMU's read-only lock bytes on it.

    A copy of an image that a running QEMU or blockbed is writing is a torn snapshot, and a
    crash test on it proves nothing; so, as ``qemu-img convert`` without ``-U``, refuse when
    another process holds the "write" permission (and keep writers out during the copy)."""
    fd = os.open(src, os.O_RDONLY)
    try:
        try:
            lock = ImageLock(fd, src, Permissions.for_open(read_only=True))
        except BlockError as e:
            raise ValueError(f"Could not open '{src}': {e}") from None
        try:
            for dst in dsts:
                shutil.copyfile(src, dst)
        finally:
            lock.release()
    finally:
        os.close(fd)

