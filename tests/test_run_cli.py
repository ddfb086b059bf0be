"""``blockbed run`` end to end with drives: the documented exit statuses.

A write error with ``werror=stop`` pauses the machine: the run ends with
status 120 and one line naming the drive, the operation and the errno; with
``werror=report`` the guest sees the error itself (and disktest fails).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, guest_elf


def blockbed(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "blockbed", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def failing_drive(tmp_path, policy: str) -> str:
    img = tmp_path / "disk.raw"
    img.write_bytes(bytes(4 << 20))
    conf = tmp_path / "blkdebug.conf"
    conf.write_text('[inject-error]\nevent = "write"\nerrno = "5"\n')
    return f"file=blkdebug:{conf}:{img},format=raw,if=virtio,werror={policy}"


def test_werror_stop_ends_the_run_with_status_120(tmp_path):
    p = blockbed("run", "--kernel", str(guest_elf("disktest")), "--append", "dev=virtio seed=1 ops=20",
                 "--drive", failing_drive(tmp_path, "stop"))
    assert p.returncode == 120, p.stderr
    assert "machine stopped" in p.stderr and "write" in p.stderr and "EIO" in p.stderr
    assert "Traceback" not in p.stderr


def test_werror_report_lets_the_guest_see_the_error(tmp_path):
    p = blockbed("run", "--kernel", str(guest_elf("disktest")), "--append", "dev=virtio seed=1 ops=20",
                 "--drive", failing_drive(tmp_path, "report"))
    assert p.returncode not in (0, 120), p.stdout + p.stderr
    assert "FAIL" in p.stdout
    assert "Traceback" not in p.stderr


def test_bad_drive_spec_is_one_clear_line(tmp_path):
    p = blockbed("run", "--kernel", str(guest_elf("hello")), "--drive", f"file={tmp_path}/x,if=scsi")
    assert p.returncode == 2
    assert p.stderr.strip().startswith("blockbed run:") and "'if'" in p.stderr
    assert "Traceback" not in p.stderr


def test_guest_exit_value_is_the_process_status():
    p = blockbed("run", "--kernel", str(guest_elf("hello")))
    assert p.returncode == 0 and "hello: done" in p.stdout
    assert "blockbed: guest-exit; exits: pio" in p.stderr


def test_summary_counts_the_drives_requests_and_exits_per_request(tmp_path):
    """The summary line ends with the block requests of the drives and the port+MMIO
    exits per request; IDE's PIO costs far more exits per request than virtio's ring."""
    import re
    per = {}
    for dev in ("virtio", "ide"):
        img = tmp_path / f"{dev}.raw"
        img.write_bytes(bytes(4 << 20))
        p = blockbed("run", "--kernel", str(guest_elf("disktest")), "--append",
                     f"dev={dev} seed=1", "--drive", f"file={img},format=raw,if={dev}")
        assert p.returncode == 0, p.stdout + p.stderr
        m = re.search(r"exits: pio (\d+), mmio (\d+).*; requests (\d+) \(exits per request "
                      r"([\d.]+)\)$", p.stderr.strip())
        assert m, p.stderr
        pio, mmio, n, ratio = int(m[1]), int(m[2]), int(m[3]), float(m[4])
        assert n > 20 and abs(ratio - (pio + mmio) / n) < 0.06
        per[dev] = ratio
    assert per["ide"] > 3 * per["virtio"]


@pytest.mark.parametrize("dev", ["virtio", "ahci", "ide", "lsi"])
def test_werror_stop_then_cont_retries_the_write(tmp_path, dev):
    """QEMU's werror=stop + `cont`: a transient write error (blkdebug, once) stops the
    machine; `--cont 1` continues, the held write is submitted again and succeeds, and
    the guest never sees an error: disktest passes and the disk holds its data."""
    img = tmp_path / "disk.raw"
    img.write_bytes(bytes(4 << 20))
    conf = tmp_path / "blkdebug.conf"
    conf.write_text('[inject-error]\nevent = "write"\nerrno = "5"\nonce = "on"\n')
    drive = f"file=blkdebug:{conf}:{img},format=raw,if={dev},werror=stop"
    args = ["run", "--kernel", str(guest_elf("disktest")), "--append", f"dev={dev} seed=3 ops=30",
            "--drive", drive]
    p = blockbed(*args)
    assert p.returncode == 120, p.stdout + p.stderr           # without --cont: the stop ends it
    p = blockbed(*args, "--cont", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS" in p.stdout and "FAIL" not in p.stdout
    assert "machine stopped" in p.stderr and "continuing (1 of 1)" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args", [
    ["--timeout", "nan"], ["--timeout", "inf"], ["--timeout", "0"], ["--timeout", "-1"],
    ["--max-instructions", "0"], ["--max-instructions", "-1"], ["--memory", "0"],
    ["--trace", "/nonexistent/dir/t.json"], ["--no-such-option"],
])
def test_bad_run_arguments_are_status_2_and_one_line(args):
    p = blockbed("run", "--kernel", str(guest_elf("hello")), *args, timeout=60)
    assert p.returncode == 2, (args, p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blockbed run: "), p.stderr
    assert args[0] in lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_closed_stdout_is_not_success():
    """`blockbed run … | head -c 10`: once stdout is gone the guest's outcome is unknown, so
    the status must not be 0 (it was: a BrokenPipeError became success)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "blockbed", "run", "--kernel", str(guest_elf("hello"))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()                     # the reader goes away before the guest prints
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 125, err
    assert "broken pipe" in err and "Traceback" not in err


def test_reader_leaving_a_running_guest_is_status_125(tmp_path):
    """`blockbed run … | head -c 10` while the guest is still working (flushtest with far more
    operations than the timeout allows): the run ends at the first write after head left,
    with the documented 125 -- not 0, and not after the 60 s timeout."""
    import time
    img = tmp_path / "disk.raw"
    img.write_bytes(bytes(64 << 20))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.monotonic()
    sh = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -c 10 >/dev/null', "sh", sys.executable,
         "-m", "blockbed", "run", "--kernel", str(guest_elf("flushtest")), "--drive",
         f"file={img},format=raw,if=virtio", "--append", "dev=virtio ops=100000000",
         "--timeout", "60"], capture_output=True, text=True, env=env, timeout=120)
    assert sh.returncode == 125, sh.stderr
    assert time.monotonic() - start < 50
    assert "broken pipe" in sh.stderr and "Traceback" not in sh.stderr
