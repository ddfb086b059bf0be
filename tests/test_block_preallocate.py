"""The preallocate filter: space reserved ahead of growing writes, the file's size
always exact, the reservation released on close; and ``img convert -O qcow2``
(which stacks it) leaves no reserved tail behind."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from blockbed.block.driver import BlockError
from blockbed.block.file import FileDriver
from blockbed.block.preallocate import PreallocateDriver
from conftest import run_tool

MiB = 1 << 20


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def test_reserves_ahead_and_releases_on_close(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"")
    node = PreallocateDriver(FileDriver(str(p)), prealloc_size=8 * MiB, prealloc_align=MiB)
    if not node.enabled:
        pytest.skip("file system cannot reserve space (fallocate KEEP_SIZE)")
    node.write(0, b"x" * 4096)
    assert os.path.getsize(p) == 4096                # size is what was written
    assert node.reserved_end == 9 * MiB              # align_up(4096 + 8 MiB, 1 MiB)
    assert allocated(p) >= 8 * MiB                   # ... but space is reserved
    node.write(4096, b"y" * MiB)                     # inside the reservation: no new one
    assert node.reserved_end == 9 * MiB
    node.write(9 * MiB - 10, b"z" * 20)              # crosses it: reserve further
    assert node.reserved_end == 18 * MiB
    assert node.length() == os.path.getsize(p) == 9 * MiB + 10
    node.close()
    assert os.path.getsize(p) == 9 * MiB + 10
    # the reservation past the end is gone, and so is the range the writes skipped inside
    # the file: it is allocated exactly as the writes alone would allocate it
    assert MiB + 4096 <= allocated(p) <= MiB + 64 * 1024
    data = p.read_bytes()
    assert data[:4096] == b"x" * 4096 and data[4096:4096 + MiB] == b"y" * MiB
    assert data[-20:] == b"z" * 20


def test_truncate_passes_through_and_resets(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"")
    node = PreallocateDriver(FileDriver(str(p)), prealloc_size=4 * MiB)
    node.write(0, b"a" * 512)
    node.truncate(MiB)
    assert node.length() == os.path.getsize(p) == MiB
    assert node.reserved_end == MiB
    node.close()


@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.ENOSPC])
def test_fallocate_failure(tmp_path, monkeypatch, err):
    """A file system that cannot reserve turns the filter off (as QEMU's); a real error
    (no space) is reported, not swallowed."""
    def failing(fd, mode, offset, length):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr("blockbed.block.preallocate.fallocate", failing)
    p = tmp_path / "f"
    p.write_bytes(b"")
    node = PreallocateDriver(FileDriver(str(p)))
    try:
        if err == errno.ENOSPC:
            with pytest.raises(BlockError, match="cannot reserve space"):
                node.write(0, b"q" * 8192)
        else:
            node.write(0, b"q" * 8192)
            assert not node.enabled
    finally:
        node.close()
    if err != errno.ENOSPC:
        assert p.read_bytes() == b"q" * 8192


def test_bad_options(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"")
    f = FileDriver(str(p))
    try:
        with pytest.raises(BlockError, match="power of 2"):
            PreallocateDriver(f, prealloc_align=3000)
    finally:
        f.close()


def test_convert_leaves_no_reserved_tail(tmp_path, qemu_img):
    """A 40 MiB convert reserves 128 MiB ahead; afterwards the qcow2 file holds exactly
    what qemu-img's output holds, including the holes of zero granules inside
    partly-written clusters, and checks clean."""
    src, dst, ref = tmp_path / "s.raw", tmp_path / "d.qcow2", tmp_path / "r.qcow2"
    with open(src, "wb") as f:
        for i in range(40):
            if i % 4 == 1:      # 4 KiB of data every 64 KiB: clusters mostly zero granules
                f.write(b"".join(os.urandom(4096) + bytes(61440) for _ in range(16)))
            else:
                f.write(os.urandom(MiB) if i % 3 else bytes(MiB))
    run_tool(sys.executable, "-m", "blockbed", "img", "convert", "-O", "qcow2", str(src), str(dst))
    run_tool(qemu_img, "convert", "-O", "qcow2", str(src), str(ref))
    assert os.path.getsize(dst) == os.path.getsize(ref)
    assert allocated(dst) <= allocated(ref) + 256 * 1024
    run_tool(qemu_img, "check", str(dst))
    run_tool(qemu_img, "compare", str(src), str(dst))
