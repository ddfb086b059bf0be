"""Confirm our verdict on a sample of crash states with the real ``qemu-img check``.

The state is written out to a temporary file (the one place a crash state
is materialised in full) and checked with ``qemu-img check -f qcow2
--output=json``.  A dirty ``lazy_refcounts`` image is checked with
``-r all``, because that is what QEMU's read-write open does to it before
any use (qcow2 spec, "dirty bit"); our checker does the same.  The verdicts
agree when both call the image clean (leaks allowed) or both call it
corrupt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass
class QemuVerdict:
    ok: bool
    corruptions: int
    leaks: int
    detail: str


class QemuImgMissing(RuntimeError):
    pass


def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if not path:
        raise QemuImgMissing("qemu-img is not installed (Debian: qemu-utils); "
                             "use --qemu-check-fraction 0")
    return path


def check_bytes(image: bytes, dirty: bool, tmpdir: str | None = None) -> QemuVerdict:
    """``qemu-img check`` on a qcow2 image given as bytes."""
    exe = qemu_img()
    fd, path = tempfile.mkstemp(suffix=".qcow2", dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(image)
        argv = [exe, "check", "-f", "qcow2", "--output=json"]
        if dirty:
            argv += ["-r", "all"]
        try:
            proc = subprocess.run(argv + [path], capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return QemuVerdict(False, 1, 0, "qemu-img check timed out after 120 s")
    finally:
        os.unlink(path)
    if proc.returncode == 1 or not proc.stdout.strip().startswith("{"):
        # the image could not be opened or checked at all: corrupt by our rules
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        return QemuVerdict(False, 1, 0, "qemu-img check failed: " + (msg[0] if msg else "?"))
    try:
        js = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return QemuVerdict(False, 1, 0, "qemu-img check printed unparsable JSON")
    corrupt = int(js.get("corruptions", 0)) + int(js.get("check-errors", 0))
    leaks = int(js.get("leaks", 0))
    return QemuVerdict(corrupt == 0, corrupt, leaks,
                       f"qemu-img check: {corrupt} corruption(s), {leaks} leak(s)")
