"""``blockbed crashtest``: output, exit codes, replay of one state, bad arguments,
the demo conformance table, and flushtest under QEMU (the guest's record
must not depend on the emulator)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, guest_elf, run_tool


def blockbed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockbed", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def elf():
    return guest_elf("flushtest")


def _img(tmp_path, qemu_img, fmt="raw", name="disk"):
    p = tmp_path / f"{name}.{fmt}"
    run_tool(qemu_img, "create", "-f", fmt, str(p), "16M")
    return p


def test_pass_leaves_the_image_untouched(tmp_path, qemu_img, elf):
    img = _img(tmp_path, qemu_img, "qcow2")
    before = img.read_bytes()
    r = blockbed("crashtest", "--drive", f"file={img},format=qcow2,if=virtio,cache=none",
                 "--states", "120", "--append", "dev=virtio seed=2 ops=80 qd=4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: PASS" in r.stdout
    m = re.search(r"states checked: (\d+) in [\d.]+ s \((\d+) states/s", r.stdout)
    assert m and int(m.group(1)) == 120 and int(m.group(2)) > 0
    assert re.search(r"crash points: \d+ flush boundaries, \d+ in-order prefixes", r.stdout)
    assert img.read_bytes() == before


def test_unsafe_fails_and_the_replay_command_reproduces_one_state(tmp_path, qemu_img, elf):
    img = _img(tmp_path, qemu_img)
    keep = tmp_path / "run"
    r = blockbed("crashtest", "--drive", f"file={img},format=raw,if=virtio,cache=unsafe",
                 "--states", "150", "--keep", str(keep))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "RESULT: FAIL" in r.stdout
    cmd = re.search(r"replay: blockbed (crashtest --replay (\S+) --state (\S+))", r.stdout)
    assert cmd and cmd.group(2) == str(keep)
    rp = blockbed(*cmd.group(1).split())
    assert rp.returncode == 1, rp.stdout + rp.stderr
    assert "durability:" in rp.stdout and "RESULT: FAIL" in rp.stdout
    ok = blockbed("crashtest", "--replay", str(keep), "--state", "0.p0")
    assert ok.returncode == 0 and "RESULT: PASS" in ok.stdout
    js = blockbed("crashtest", "--replay", str(keep), "--state", cmd.group(3), "--json")
    assert js.returncode == 1 and json.loads(js.stdout)["violations"]


def test_json_report(tmp_path, qemu_img, elf):
    img = _img(tmp_path, qemu_img)
    r = blockbed("crashtest", "--drive", f"file={img},format=raw,if=ide,cache=writeback",
                 "--states", "100", "--json", "--seed", "3")
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)
    assert js["ok"] and js["states_checked"] == 100 and js["durable_writes"] > 20
    assert js["guest_promises"] > 20 and js["violations"] == []


def test_qemu_check_fraction(tmp_path, qemu_img, elf):
    img = _img(tmp_path, qemu_img, "qcow2")
    r = blockbed("crashtest", "--drive", f"file={img},format=qcow2,if=virtio",
                 "--states", "100", "--qemu-check-fraction", "0.1", "--json")
    js = json.loads(r.stdout)
    assert r.returncode == 0 and js["qemu_checked"] > 0 and js["qemu_agreed"] == js["qemu_checked"]


@pytest.mark.parametrize("args,needle", [
    ((), "--drive SPEC is required"),
    (("--drive", "file=/nonexistent.img,if=virtio"), "No such file"),
    (("--drive", "file=IMG,format=raw,if=virtio,log-writes=/tmp/x"), "log-writes"),
    (("--drive", "file=IMG,format=raw,if=virtio", "--states", "0"), "--states"),
    (("--drive", "file=IMG,format=raw,if=virtio", "--qemu-check-fraction", "2"), "between 0 and 1"),
    (("--drive", "file=IMG,format=raw,if=floppy"), "if"),
    (("--drive", "file=IMG,format=raw,if=virtio", "--kernel", "/nonexistent.elf"), "no such guest"),
    (("--replay", "/"), "--state"),
    (("--replay", "/", "--state", "0.p0"), "not a crashtest run directory"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, qemu_img, args, needle):
    img = _img(tmp_path, qemu_img)
    args = tuple(a.replace("IMG", str(img)) for a in args)
    r = blockbed("crashtest", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_bad_state_id(tmp_path, qemu_img, elf):
    img = _img(tmp_path, qemu_img)
    keep = tmp_path / "run"
    r = blockbed("crashtest", "--drive", f"file={img},format=raw,if=ide", "--states", "20",
                 "--keep", str(keep), "--append", "dev=ide ops=30")
    assert r.returncode == 0, r.stdout + r.stderr
    for bad in ("x", "999.p0", "0.p99999", "0.q1"):
        rr = blockbed("crashtest", "--replay", str(keep), "--state", bad)
        assert rr.returncode == 2 and "state" in rr.stderr and "Traceback" not in rr.stderr


def test_conformance_table_rows():
    from blockbed.crashrun.demo import conformance_table
    guest_elf("flushtest")
    lines: list[str] = []
    rows = conformance_table(controllers=("virtio",), caches=("writeback", "unsafe"),
                             states=100, ops=80, out=lines.append)
    assert [(r.cache, r.result) for r in rows] == [("writeback", "PASS"), ("unsafe", "EXPECTED-FAIL")]
    assert lines[0].split()[:2] == ["controller", "cache"]
    assert rows[0].writes_verified > 20 and rows[0].states == 100


def test_flushtest_record_is_the_same_under_qemu(tmp_path, qemu_img, qemu_system, elf):
    """Differential: the guest's workload and read-back do not depend on the emulator."""
    from harness import run_blockbed, run_qemu
    append = "dev=virtio seed=4 ops=120 qd=4"
    a = _img(tmp_path, qemu_img, "raw", "a")
    b = _img(tmp_path, qemu_img, "raw", "b")
    q = run_qemu(elf, append, extra=["-drive", f"file={a},if=none,id=d0,format=raw",
                                     "-device", "virtio-blk-pci,drive=d0"])
    ours = run_blockbed(elf, append, drives=[f"file={b},format=raw,if=virtio"])
    keep = lambda t: [l for l in t.splitlines() if l.startswith(("FT summary", "FT verify", "FT wce"))]
    assert q.status == 0 and ours.status == 0, q.transcript[-500:] + ours.transcript[-500:]
    assert keep(q.transcript) == keep(ours.transcript)
    assert any(l.startswith("FT verify ok") for l in keep(q.transcript))
    # both runs left the same disk
    run_tool(qemu_img, "compare", "-f", "raw", "-F", "raw", str(a), str(b))


def test_damaged_run_directory_is_a_clear_error(tmp_path, qemu_img, elf):
    img = _img(tmp_path, qemu_img)
    keep = tmp_path / "run"
    r = blockbed("crashtest", "--drive", f"file={img},format=raw,if=virtio", "--states", "20",
                 "--keep", str(keep), "--append", "dev=virtio ops=30")
    assert r.returncode == 0, r.stdout + r.stderr
    damage = [
        ("requests.json", lambda p: p.write_text("{not json")),
        ("requests.bin", lambda p: p.write_bytes(p.read_bytes()[:10])),
        ("host.log", lambda p: p.write_bytes(b"garbage" * 10)),
        ("run.json", lambda p: p.write_text('{"version": 99}')),
        ("base.img", lambda p: p.unlink()),
    ]
    for name, hurt in damage:
        path = keep / name
        saved = path.read_bytes()
        hurt(path)
        rr = blockbed("crashtest", "--replay", str(keep), "--state", "0.p0")
        assert rr.returncode == 2, (name, rr.stdout, rr.stderr)
        assert "Traceback" not in rr.stderr and str(keep) in rr.stderr
        path.write_bytes(saved)
    assert blockbed("crashtest", "--replay", str(keep), "--state", "0.p0").returncode == 0


@pytest.mark.parametrize("cache,rc", [("none", 0), ("unsafe", 1)])
def test_any_guest_workload(tmp_path, qemu_img, cache, rc):
    """Without flushtest's record the backend's rules alone define durability."""
    disktest = guest_elf("disktest")
    img = _img(tmp_path, qemu_img, "qcow2")
    r = blockbed("crashtest", "--drive", f"file={img},format=qcow2,if=virtio,cache={cache}",
                 "--kernel", str(disktest), "--append", "dev=virtio seed=3 ops=60 span=2048 qd=4",
                 "--states", "150")
    assert r.returncode == rc, r.stdout + r.stderr
    assert "no promise record" in r.stdout


def test_image_held_by_a_writer_is_refused(tmp_path, qemu_img, elf):
    """crashtest copies the image; a copy of an image another process is writing is torn, so
    it is refused as `qemu-img convert` without -U refuses it (QEMU's lock bytes)."""
    import os
    from blockbed.block.locking import ImageLock, Permissions
    img = _img(tmp_path, qemu_img, "qcow2")
    fd = os.open(img, os.O_RDWR)
    writer = ImageLock(fd, str(img), Permissions.for_open(read_only=False))
    try:
        r = blockbed("crashtest", "--drive", f"file={img},format=qcow2,if=virtio",
                     "--states", "10", "--append", "dev=virtio seed=2 ops=10")
        q = subprocess.run([qemu_img, "convert", "-O", "raw", str(img), str(tmp_path / "o.raw")],
                           capture_output=True, text=True)
    finally:
        writer.release()
        os.close(fd)
    assert q.returncode != 0 and 'Failed to get shared "write" lock' in q.stderr
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'Failed to get shared "write" lock' in r.stderr and "RESULT" not in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # Once the writer is gone the same command runs.
    ok = blockbed("crashtest", "--drive", f"file={img},format=qcow2,if=virtio",
                  "--states", "10", "--append", "dev=virtio seed=2 ops=10")
    assert ok.returncode == 0, ok.stdout + ok.stderr
