"""Crash conformance with a real filesystem (crashrun/linux.py): Debian's Linux runs an
ext4 fsync workload, every host write is logged, and every crash state after the
filesystem was made must fsck clean and keep each file whose fsync returned.

Also the pieces on their own: the dm-log-writes reader against logs QEMU's
blklogwrites wrote, and the fsync-promise parser."""
from __future__ import annotations

import json
import os
import sys
import subprocess
from pathlib import Path

import pytest

from blockbed.block.crash.dmlog import DmLogError, complete_entries, read_dm_log
from blockbed.block.crash.fscheck import FsPromise, check_filesystem, parse_promises
from blockbed.block.crash.hostlog import OpKind
from tests.conftest import REPO, need_tool

OUT = REPO / "build" / "linux"


def _blklogwrites(tmp_path: Path, *cmds: str) -> Path:
    qemu_io = need_tool("qemu-io")
    img, log = tmp_path / "d.raw", tmp_path / "d.log"
    subprocess.run([need_tool("qemu-img"), "create", "-q", "-f", "raw", str(img), "1M"], check=True)
    log.write_bytes(b"")
    spec = {"driver": "raw", "file": {"driver": "blklogwrites",
                                       "file": {"driver": "file", "filename": str(img)},
                                       "log": {"driver": "file", "filename": str(log)},
                                       "log-super-update-interval": 1}}
    argv = [qemu_io, "-t", "writeback"]      # writethrough would add a flush per write
    for c in cmds:
        argv += ["-c", c]
    subprocess.run(argv + ["json:" + json.dumps(spec)], check=True, capture_output=True)
    return log


def test_dm_log_from_qemu_blklogwrites(tmp_path):
    log = _blklogwrites(tmp_path, "write -P 0x5a 4096 8192", "flush", "write -z 0 512",
                        "write -P 0x11 65536 512")
    hl = read_dm_log(str(log))
    kinds = [op.kind for op in hl.ops]
    assert kinds == [OpKind.WRITE, OpKind.FLUSH, OpKind.WRITE, OpKind.WRITE, OpKind.FLUSH]  # + close
    w = hl.ops[0]
    assert (w.offset, w.length, w.data) == (4096, 8192, b"\x5a" * 8192)
    assert hl.ops[2].data == bytes(512)          # a write-zeroes is logged as zeros
    assert (hl.ops[3].offset, hl.ops[3].data) == (65536, b"\x11" * 512)
    assert complete_entries(str(log)) == 5


def test_dm_log_cut_short_counts_only_complete_entries(tmp_path):
    log = _blklogwrites(tmp_path, "write -P 1 0 4096", "write -P 2 8192 4096")
    data = log.read_bytes()
    cut = tmp_path / "cut.log"
    cut.write_bytes(data[:512 + 512 + 4096 + 512 + 100])   # second entry's data incomplete
    assert complete_entries(str(cut)) == 1
    with pytest.raises(DmLogError, match="runs past the end"):
        read_dm_log(str(cut))
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"\0" * 512)
    with pytest.raises(DmLogError, match="bad magic"):
        read_dm_log(str(bad))
    assert complete_entries(str(bad)) == 0


def test_fsync_promises_take_the_position_of_their_line():
    lines = [(-1, "booting"), (5, "BLOCKBED-CRASH ready"), (9, "BLOCKBED-FSYNC /f1 24576"),
             (12, "noise BLOCKBED-FSYNC /f2 49152")]
    ready, proms = parse_promises(lines)
    assert ready == 5
    assert proms == [FsPromise("/f1", 24576, 9), FsPromise("/f2", 49152, 12)]


def test_filesystem_check_finds_a_missing_file_and_garbage(tmp_path):
    mke2fs = need_tool("mke2fs")
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run([mke2fs, "-q", "-F", "-t", "ext4", str(img)], check=True)
    data = bytearray(img.read_bytes())
    assert check_filesystem(data, len(data), [], b"") == []
    probs = check_filesystem(data, len(data), [FsPromise("/f1", 10, 0)], b"0123456789")
    assert probs == ["fsync'd file /f1 (10 bytes): missing"]
    data[1024:2048] = os.urandom(1024)                      # the superblock
    assert check_filesystem(data, len(data), [], b"")        # fsck cannot even start


@pytest.fixture(scope="module")
def linux_guest():
    need_tool("qemu-system-x86_64")
    need_tool("e2fsck")
    from blockbed.linuxguest import build
    try:
        return build.build(OUT, OUT / "debs")
    except build.BuildError as e:
        pytest.skip(f"Linux guest not buildable (Debian packages via apt-get download): {e}")


def _run(ctrl, fmt, cache, states=16, recorder="qemu"):
    from blockbed.crashrun.linux import linux_crashtest
    return linux_crashtest(ctrl, fmt, cache, states=states, keep=False, recorder=recorder)


def test_linux_ext4_survives_every_crash_state_with_cache_none(linux_guest):
    rep = _run("virtio", "raw", "none")
    assert "BLOCKBED-LINUX PASS crash" in rep.guest_line
    assert len(rep.promises) == 6 and rep.host_counts["flush"] >= 6
    assert len(rep.states) == 16
    assert rep.ok, [s.problems for s in rep.violating]


def test_linux_crash_test_catches_cache_unsafe(linux_guest):
    rep = _run("virtio", "raw", "unsafe")
    assert rep.host_counts["flush"] == 0            # unsafe drops every flush on the way down
    assert not rep.ok and rep.violating
    assert any("fsync'd file" in p for s in rep.violating for p in s.problems)


def test_crashtest_cli_linux(linux_guest, tmp_path):
    r = subprocess.run([sys.executable, "-m", "blockbed", "crashtest", "--linux", "ahci",
                        "--format", "qcow2", "--cache", "writeback", "--states", "8", "--json"],
                       capture_output=True, text=True)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["ok"], out
    assert out["states_checked"] == 8 and out["fsync_promises"] == 6


@pytest.mark.linux_blockbed
def test_linux_crash_recorded_on_blockbeds_ahci_and_qcow2(linux_guest):
    """The same workload through blockbed's own stack (Linux's ahci driver on our AHCI
    model, qcow2, cache=writeback, the logwrites filter): every state is fine, and
    the six promises were stamped with exact log positions (each after a flush)."""
    rep = _run("ahci", "qcow2", "writeback", states=12, recorder="blockbed")
    assert "BLOCKBED-LINUX PASS crash ahci" in rep.guest_line
    assert len(rep.promises) == 6 and rep.host_counts["flush"] >= 6
    assert rep.ok, [s.problems for s in rep.violating]


@pytest.mark.linux_blockbed
def test_linux_crash_recorded_on_blockbed_catches_cache_unsafe(linux_guest):
    """blockbed's cache=unsafe drops the guest's flushes before the host log: the
    sweep must find fsync'd files lost (a recorder that passed blindly would not)."""
    rep = _run("virtio", "raw", "unsafe", recorder="blockbed")
    assert rep.host_counts["flush"] == 0
    assert not rep.ok and any("fsync'd file" in p for s in rep.violating for p in s.problems)


@pytest.mark.slow
@pytest.mark.linux
@pytest.mark.linux_blockbed
@pytest.mark.parametrize("ctrl", ["virtio", "ahci", "ide", "lsi"])
@pytest.mark.parametrize("cache", ["none", "writethrough"])
def test_linux_crash_matrix_on_blockbed(linux_guest, ctrl, cache):
    rep = _run(ctrl, "qcow2", cache, states=24, recorder="blockbed")
    assert rep.ok, [s.problems for s in rep.violating]


@pytest.mark.slow
@pytest.mark.linux
@pytest.mark.parametrize("ctrl", ["virtio", "ahci", "ide", "lsi"])
@pytest.mark.parametrize("cache", ["none", "writeback", "writethrough", "directsync"])
def test_linux_crash_matrix(linux_guest, ctrl, cache):
    rep = _run(ctrl, "qcow2", cache, states=24)
    assert rep.ok, [s.problems for s in rep.violating]
