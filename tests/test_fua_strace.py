"""What a FUA (writethrough) write costs in system calls, seen with strace, blockbed
beside QEMU 7.2: by default both write and then fdatasync; with the blockbed drive
option ``native-fua=on`` the write is one ``pwritev2(…, RWF_DSYNC)``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, need_tool

PROBE = """
import sys, mmap
from blockbed.block.drivespec import open_drive
be = open_drive(sys.argv[1])
buf = memoryview(mmap.mmap(-1, 4096))
sys.stderr.write("MARK-START\\n"); sys.stderr.flush()
be.writev(0, [buf])
sys.stderr.write("MARK-END\\n"); sys.stderr.flush()
be.close()
"""
CALLS = "pwrite64,pwritev,pwritev2,fdatasync,fsync"


def _strace() -> str:
    path = shutil.which("strace")
    if path is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    return path


def _between_marks(trace: str) -> list[str]:
    out, on = [], False
    for line in trace.splitlines():
        if "MARK-START" in line:
            on = True
        elif "MARK-END" in line:
            break
        elif on and re.match(r"(\[pid +\d+\] )?(pwrite|fdatasync|fsync)", line):
            out.append(re.sub(r"^\[pid +\d+\] ", "", line))
    return out


def _ours(tmp_path, spec: str) -> list[str]:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([_strace(), "-f", "-e", f"trace={CALLS},write", sys.executable, "-c",
                        PROBE, f"file={img},format=raw,{spec}"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return _between_marks(p.stderr)


def test_writethrough_write_is_write_then_fdatasync_as_qemu(tmp_path):
    calls = _ours(tmp_path, "cache=writethrough")
    assert [c.split("(")[0] for c in calls] == ["pwritev2", "fdatasync"], calls
    assert "RWF_DSYNC" not in calls[0]
    # QEMU 7.2 does the same: its write, then fdatasync
    qemu_io = need_tool("qemu-io")
    img = tmp_path / "q.img"
    img.write_bytes(bytes(1 << 20))
    p = subprocess.run([_strace(), "-f", "-e", f"trace={CALLS}", qemu_io, "-f", "raw", "-t",
                        "writethrough", "-c", "write 0 4k", str(img)], capture_output=True,
                       text=True)
    theirs = [re.sub(r"^\[pid +\d+\] ", "", line).split("(")[0] for line in p.stderr.splitlines()
              if re.search(r"(pwrite\w*|fdatasync)\(", line) and "resumed" not in line]
    assert theirs[-2:] in (["pwrite64", "fdatasync"], ["pwritev", "fdatasync"]), theirs


def test_native_fua_is_one_pwritev2_with_rwf_dsync(tmp_path):
    calls = _ours(tmp_path, "cache=writethrough,native-fua=on")
    assert len(calls) == 1 and calls[0].startswith("pwritev2(") and "RWF_DSYNC" in calls[0]


def test_writeback_write_is_one_plain_write(tmp_path):
    calls = _ours(tmp_path, "cache=writeback")
    assert len(calls) == 1 and "RWF_DSYNC" not in calls[0]
