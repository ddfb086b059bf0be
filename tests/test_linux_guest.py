"""The Linux guest (Debian's kernel + busybox initramfs) under QEMU, and under blockbed.

The fast tests boot it under QEMU and on blockbed's machine, on virtio-blk with a raw disk, and
check from the host that the disk holds the pattern /init wrote (layout.py).  The full matrix (4 controllers x raw/qcow2)
is marked `linux` (make test-linux); blockbed's side is also marked `linux_blockbed`.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from blockbed.linuxguest import build, layout, qemu
from tests.conftest import REPO, need_tool

OUT = REPO / "build" / "linux"


@pytest.fixture(scope="module")
def guest() -> tuple[Path, Path]:
    need_tool("qemu-system-x86_64")
    need_tool("qemu-img")
    try:
        return build.build(OUT, OUT / "debs")
    except build.BuildError as e:
        pytest.skip(f"Linux guest not buildable (Debian packages via apt-get download): {e}")


def test_closure_is_dependency_first() -> None:
    mods = {n: build.Module(n, Path(n), d) for n, d in
            {"a": ["b", "c"], "b": ["c"], "c": [], "x": ["c"]}.items()}
    assert build.closure(mods, ["a"], set()) == ["c", "b", "a"]
    assert build.closure(mods, ["x"], {"c"}) == ["x"]
    with pytest.raises(build.BuildError):
        build.closure(mods, ["missing"], set())


def test_cpio_round_trips_through_cpio_tool(tmp_path: Path) -> None:
    need = __import__("shutil").which("cpio")
    if not need:
        pytest.skip("cpio not installed")
    arc = build._cpio_newc({"d": (0o40755, b""), "d/f": (0o100644, b"hello"),
                            "l": (0o120777, b"d/f")})
    subprocess.run(["cpio", "-idm", "--quiet"], input=arc, cwd=tmp_path, check=True)
    assert (tmp_path / "d/f").read_bytes() == b"hello"
    assert (tmp_path / "l").is_symlink()


def test_pattern_check_sees_an_empty_disk(tmp_path: Path) -> None:
    need_tool("qemu-img")
    disk = tmp_path / "d.raw"
    qemu.make_disk(disk, "raw")
    assert not qemu.pattern_on_disk(disk, "raw")


def _run_and_check(runner, guest, ctrl: str, fmt: str, tmp_path: Path) -> qemu.RunResult:
    disk = tmp_path / f"{ctrl}.{fmt}"
    qemu.make_disk(disk, fmt)
    r = runner(*guest, ctrl, disk, fmt)
    assert r.passed, f"{r.emulator} {ctrl} {fmt}: {r.line}\n{r.console[-4000:]}"
    assert r.line == f"BLOCKBED-LINUX PASS {ctrl}"
    assert qemu.pattern_on_disk(disk, fmt), "pattern written by /init is not on the disk"
    if fmt == "qcow2":
        ok, out = qemu.qcow2_check(disk)
        assert ok, out
    return r


def test_qemu_virtio_raw(guest, tmp_path: Path) -> None:
    _run_and_check(qemu.run_qemu, guest, "virtio", "raw", tmp_path)


@pytest.mark.linux_blockbed
def test_blockbed_virtio_raw(guest, tmp_path: Path) -> None:
    """The same kernel and initramfs on blockbed's machine (about 45 s on an idle 2-core
    machine; QEMU TCG: about 10 s): Linux's virtio_blk, ext4 and the pattern."""
    r = _run_and_check(qemu.run_blockbed, guest, "virtio", "raw", tmp_path)
    assert "guest-exit" in r.console, r.console[-2000:]


@pytest.mark.slow
@pytest.mark.linux
@pytest.mark.linux_blockbed
def test_blockbed_virtio_under_an_instruction_budget(guest, tmp_path: Path) -> None:
    """Linux also passes with unicorn counting every instruction (`--max-instructions`,
    about 2.5x slower).  Unicorn leaves a counted slice early after some of Linux's
    BAR-decode writes; that return was taken for the count running out and the whole
    budget charged, so the run ended at the first COMMAND write, having printed
    nothing."""
    disk = tmp_path / "virtio.raw"
    qemu.make_disk(disk, "raw")
    r = qemu.run_blockbed(*guest, "virtio", disk, "raw", extra=("--max-instructions", str(10**12)))
    assert r.passed, f"{r.line}\n{r.console[-4000:]}"


MATRIX = [(c, f) for c in layout.CONTROLLERS for f in ("raw", "qcow2")]


@pytest.mark.slow
@pytest.mark.linux
@pytest.mark.parametrize("ctrl,fmt", MATRIX)
def test_qemu_matrix(guest, ctrl: str, fmt: str, tmp_path: Path) -> None:
    _run_and_check(qemu.run_qemu, guest, ctrl, fmt, tmp_path)


@pytest.mark.slow
@pytest.mark.linux
@pytest.mark.linux_blockbed
@pytest.mark.parametrize("ctrl,fmt", MATRIX)
def test_blockbed_matrix(guest, ctrl: str, fmt: str, tmp_path: Path) -> None:
    qd = tmp_path / "q"
    qd.mkdir()
    _run_and_check(qemu.run_qemu, guest, ctrl, fmt, qd)
    _run_and_check(qemu.run_blockbed, guest, ctrl, fmt, tmp_path)
    # Same guest, same workload: the two disks must be equal up to mke2fs's random UUIDs and
    # timestamps, so only the deterministic pattern region is compared byte for byte.
    assert qemu.read_disk(tmp_path / f"{ctrl}.{fmt}", fmt, layout.PATTERN_OFFSET,
                          layout.PATTERN_SIZE) == qemu.read_disk(
        qd / f"{ctrl}.{fmt}", fmt, layout.PATTERN_OFFSET, layout.PATTERN_SIZE)
