"""Filesystem-level crash checks: a crash state must fsck clean and keep every fsync'd file.

CrashMonkey's oracle, for a guest that runs a real filesystem (the Linux guest's
crash workload, docs/linux-guest.md).  The guest prints one line when ``fsync``
returned for a file::

    BLOCKBED-FSYNC <path> <bytes>

and the recorder notes the host-log position at which the line was seen (the
position can only be *later* than the true one, which makes the check weaker,
never wrong).  A crash at or after that position must show the file with
exactly its content (the first ``bytes`` of the pattern).  The check of one
state, on a raw copy of the guest-visible disk:

1. ``e2fsck -f -y`` (replays the journal, as a mount would): an exit status
   with bit 2 (4: errors left uncorrected) or bit 3 (8: operational error) set
   is a violation; 1 and 2 (errors corrected) are normal after a crash;
2. ``e2fsck -f -n`` again: anything other than 0 is a violation (the first
   pass did not leave a consistent filesystem);
3. each promised file read with ``debugfs -R "cat PATH"``: missing, short or
   different content is a violation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

FSYNC_LINE = re.compile(r"BLOCKBED-FSYNC (\S+) (\d+)")
READY_LINE = "BLOCKBED-CRASH ready"


class FsToolsMissing(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class FsPromise:
    path: str          # inside the filesystem, e.g. /f3
    size: int
    pos: int           # host-log position from which the file must be intact


def parse_promises(lines: list[tuple[int, str]]) -> tuple[int | None, list[FsPromise]]:
    """(position of the "ready" line, promises) from (host position, serial line) pairs."""
    ready = None
    out: list[FsPromise] = []
    for pos, line in lines:
        if READY_LINE in line and ready is None:
            ready = pos
        m = FSYNC_LINE.search(line)
        if m:
            out.append(FsPromise(m.group(1), int(m.group(2)), pos))
    return ready, out


def tools() -> tuple[str, str]:
    e2fsck = shutil.which("e2fsck") or "/sbin/e2fsck"
    debugfs = shutil.which("debugfs") or "/sbin/debugfs"
    if not (os.path.exists(e2fsck) and os.path.exists(debugfs)):
        raise FsToolsMissing("e2fsck and debugfs are needed (Debian package e2fsprogs)")
    return e2fsck, debugfs


def check_filesystem(disk: bytes | bytearray | memoryview, fs_size: int,
                     promises: list[FsPromise], expected: bytes) -> list[str]:
    """Problems found in one crash state's disk (empty: the state is fine)."""
    e2fsck, debugfs = tools()
    problems: list[str] = []
    fd, img = tempfile.mkstemp(prefix="blockbed-fs-", suffix=".img")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(disk)[:fs_size])
        env = dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000")   # deterministic output
        first = subprocess.run([e2fsck, "-f", "-y", img], capture_output=True, text=True,
                               errors="replace", env=env)
        if first.returncode & 12:
            problems.append(f"e2fsck -fy exit {first.returncode}: {_tail(first.stdout)}")
            return problems
        second = subprocess.run([e2fsck, "-f", "-n", img], capture_output=True, text=True,
                                errors="replace", env=env)
        if second.returncode:
            problems.append(f"e2fsck -fn after repair exit {second.returncode}: "
                            f"{_tail(second.stdout)}")
        for p in promises:
            got = subprocess.run([debugfs, "-R", f"cat {p.path}", img], capture_output=True,
                                 env=env).stdout
            want = expected[:p.size]
            if got != want:
                why = ("missing" if not got else f"{len(got)} bytes, expected {p.size}"
                       if len(got) != p.size else "content differs")
                problems.append(f"fsync'd file {p.path} ({p.size} bytes): {why}")
    finally:
        os.unlink(img)
    return problems


def _tail(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])
