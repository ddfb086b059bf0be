"""QEMU-compatible image locking, checked against the real qemu-io / qemu-img.

QEMU (block/file-posix.c) read-locks byte 100+i while it holds permission i
and byte 200+i while it refuses to share it (i: 0 consistent read, 1 write,
2 write unchanged, 3 resize).  Each direction is tested with a live QEMU
process holding the image.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from blockbed.block.driver import BlockError
from blockbed.block.file import FileDriver, create_file
from blockbed.block.locking import lock_bytes_held
from blockbed.block.registry import open_image
from conftest import run_tool

MiB = 1 << 20


@pytest.fixture
def raw_img(tmp_path):
    p = str(tmp_path / "disk.img")
    create_file(p, MiB)
    return p


@pytest.fixture
def qcow2_img(tmp_path, qemu_img):
    p = str(tmp_path / "disk.qcow2")
    run_tool(qemu_img, "create", "-q", "-f", "qcow2", p, "1M")
    return p


class QemuIoHolder:
    """A qemu-io process keeping the image open until closed."""

    def __init__(self, qemu_io: str, path: str, fmt: str, *args: str):
        self.path = path
        before = lock_bytes_held(path)
        self.proc = subprocess.Popen([qemu_io, "-f", fmt, *args, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while lock_bytes_held(path) == before:
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu-io exited: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("qemu-io did not lock the image")
            time.sleep(0.02)

    def close(self) -> None:
        self.proc.communicate("quit\n", timeout=10)

    def __enter__(self) -> "QemuIoHolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def held(path: str) -> set[int]:
    return {b for b, v in lock_bytes_held(path).items() if v}


# --- same lock bytes as QEMU -------------------------------------------------------

def test_lock_bytes_equal_qemus_for_writer_and_reader(qemu_io, qcow2_img):
    with QemuIoHolder(qemu_io, qcow2_img, "qcow2"):
        qemu_rw = held(qcow2_img)
    with QemuIoHolder(qemu_io, qcow2_img, "qcow2", "-r"):
        qemu_ro = held(qcow2_img)
    with FileDriver(qcow2_img):
        ours_rw = held(qcow2_img)
    with FileDriver(qcow2_img, read_only=True):
        ours_ro = held(qcow2_img)
    assert qemu_rw == ours_rw == {100, 101, 103, 201, 203}
    assert qemu_ro == ours_ro == {100, 201, 203}
    assert held(qcow2_img) == set()  # close released everything


# --- blockbed holds, QEMU tries ------------------------------------------------------

def test_qemu_cannot_write_while_blockbed_writes(qemu_io, raw_img):
    with open_image(raw_img, "raw"):
        p = run_tool(qemu_io, "-f", "raw", "-c", "write 0 512", raw_img, check=False)
        assert p.returncode != 0
        assert 'Failed to get "write" lock' in p.stderr
        assert "Is another process using the image" in p.stderr
    run_tool(qemu_io, "-f", "raw", "-c", "write 0 512", raw_img)  # released on close


def test_qemu_img_info_needs_force_share_while_blockbed_writes(qemu_img, qcow2_img):
    # qemu-img opening qcow2 refuses to share "write" (its metadata must not change
    # under it), so it must fail while we hold "write" — and -U reads anyway.
    with FileDriver(qcow2_img):
        p = run_tool(qemu_img, "info", qcow2_img, check=False)
        assert p.returncode != 0 and 'Failed to get shared "write" lock' in p.stderr
        p = run_tool(qemu_img, "info", "-U", qcow2_img)
        assert "file format: qcow2" in p.stdout
    run_tool(qemu_img, "info", qcow2_img)


def test_qemu_reader_shares_with_blockbed_reader(qemu_io, raw_img):
    with open_image(raw_img, "raw", read_only=True):
        p = run_tool(qemu_io, "-r", "-f", "raw", "-c", "read 0 512", raw_img)
        assert "read 512/512 bytes" in p.stdout
        p = run_tool(qemu_io, "-f", "raw", "-c", "write 0 512", raw_img, check=False)
        assert p.returncode != 0 and 'Failed to get "write" lock' in p.stderr


def test_locking_off_takes_no_locks(qemu_io, raw_img):
    with open_image(raw_img, "raw", options={"locking": "off"}):
        assert held(raw_img) == set()
        run_tool(qemu_io, "-f", "raw", "-c", "write 0 512", raw_img)


# --- QEMU holds, blockbed tries ------------------------------------------------------------

def test_blockbed_cannot_open_while_qemu_writes(qemu_io, raw_img):
    with QemuIoHolder(qemu_io, raw_img, "raw"):
        with pytest.raises(BlockError) as ei:
            open_image(raw_img, "raw")
        assert str(ei.value) == ('Failed to get shared "write" lock; is another process '
                                 f'using the image [{raw_img}]?')
        with pytest.raises(BlockError, match='Failed to get shared "write" lock'):
            open_image(raw_img, "raw", read_only=True)
        with open_image(raw_img, "raw", read_only=True, force_share=True) as node:
            assert node.length() == MiB
        assert held(raw_img) == {100, 101}  # our failed attempts left nothing behind


def test_blockbed_writer_refused_by_qemu_reader(qemu_io, qcow2_img):
    with QemuIoHolder(qemu_io, qcow2_img, "qcow2", "-r"):
        with pytest.raises(BlockError) as ei:
            FileDriver(qcow2_img)
        assert str(ei.value).startswith('Failed to get "write" lock')
        FileDriver(qcow2_img, read_only=True).close()  # read-only sharing works


def test_create_refuses_an_image_in_use(qemu_io, raw_img):
    with QemuIoHolder(qemu_io, raw_img, "raw"):
        with pytest.raises(BlockError, match="lock"):
            create_file(raw_img, 2 * MiB)
    assert len(open(raw_img, "rb").read()) == MiB  # not truncated


def test_two_opens_in_one_process_conflict(raw_img):
    with FileDriver(raw_img):
        with pytest.raises(BlockError, match='Failed to get "write" lock'):
            FileDriver(raw_img)
    with FileDriver(raw_img, read_only=True), FileDriver(raw_img, read_only=True):
        pass
