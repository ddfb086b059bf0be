"""The damaged-image corpus (tests/qcow2_corpus.py) against blockbed's invariants.

For every kind of damage, independent of what the damage is:

1. no `blockbed img` command raises (each failure is an exit status and one line),
2. read-only commands leave the file byte-for-byte unchanged,
3. a `convert` that succeeds produced the image's real data (no silent wrong read),
   and where qemu-img reads the real data, blockbed does too (no over-refusal),
4. writes either fail with an error or, once flushed, read back, and never make `qemu-img check`
   report more corruption than before (no write through damaged metadata).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from blockbed.block import registry
from blockbed.block.driver import BlockError
from blockbed.cli import main as blockbed_main
from conftest import need_tool
from qcow2_corpus import FREES, KINDS, WRITES, build_base, expected_after, make

READ_ONLY_COMMANDS = [
    ["info"], ["info", "--output=json"], ["check"], ["check", "--output=json"],
    ["map"], ["map", "--output=json"], ["snapshot", "-l"], ["measure", "-O", "qcow2"],
]
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    d = tmp_path_factory.mktemp("corpus")
    path = d / "base.qcow2"
    content = build_base(qemu_img, qemu_io, path)
    return path, content


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cli(capsys, argv) -> tuple[int, str, str]:
    try:
        rc = blockbed_main(argv)
    except SystemExit as e:       # argparse
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def _qemu_corruptions(qemu_img, path: Path) -> int | None:
    q = subprocess.run([qemu_img, "check", "--output=json", str(path)],
                       capture_output=True, text=True)
    try:
        return json.loads(q.stdout).get("corruptions", 0)
    except ValueError:
        return None       # qemu-img cannot even open it


@pytest.mark.parametrize("dmg", KINDS, ids=lambda d: d.name)
def test_read_only_commands(tmp_path, capsys, base, dmg):
    img = tmp_path / "d.qcow2"
    make(base[0], img, dmg)
    before = _sha(img)
    for cmd in READ_ONLY_COMMANDS:
        rc, out, err = _cli(capsys, ["img", *cmd, str(img)])
        assert "Traceback" not in err, (cmd, err)
        if rc:
            assert err.strip(), f"{cmd}: status {rc} without a message"
            if cmd[0] != "check":      # check's report is many lines by design
                assert err.count("\n") <= 3, (cmd, err)
    rc, _, err = _cli(capsys, ["img", "compare", str(base[0]), str(img)])
    assert "Traceback" not in err
    assert _sha(img) == before, "a read-only command changed the image"


@pytest.mark.parametrize("dmg", KINDS, ids=lambda d: d.name)
def test_convert_never_returns_wrong_data(tmp_path, capsys, base, dmg, qemu_img):
    img = tmp_path / "d.qcow2"
    make(base[0], img, dmg)
    before = _sha(img)
    out = tmp_path / "out.raw"
    rc, _, err = _cli(capsys, ["img", "convert", "-O", "raw", str(img), str(out)])
    assert "Traceback" not in err
    assert _sha(img) == before
    ours_ok = rc == 0
    qout = tmp_path / "q.raw"
    q = subprocess.run([qemu_img, "convert", "-O", "raw", str(img), str(qout)],
                       capture_output=True, text=True)
    qemu_data = qout.read_bytes() if q.returncode == 0 else None
    expect = base[1]
    if dmg.valid:
        assert qemu_data is not None, q.stderr
        expect = qemu_data
    if ours_ok:
        assert out.read_bytes() == expect, "convert succeeded with wrong data"
    else:
        assert err.strip()
    if qemu_data == expect:
        assert ours_ok, f"qemu-img reads the real data, blockbed refuses: {err.strip()}"


@pytest.mark.parametrize("dmg", KINDS, ids=lambda d: d.name)
def test_writes_never_damage_further(tmp_path, capsys, base, dmg, qemu_img):
    img = tmp_path / "d.qcow2"
    make(base[0], img, dmg)
    worse_before = _qemu_corruptions(qemu_img, img)
    try:
        node = registry.open_image(str(img), "qcow2")
    except BlockError:
        return          # refused to open read/write: nothing can be damaged
    done, freed = [], []
    try:
        for i, (off, n) in enumerate(WRITES):
            # a write is durable once a flush after it succeeded (an error in between
            # may drop cached metadata, as a power cut would)
            try:
                node.write(off, bytes([0x70 + i]) * n)
                node.flush()
                done.append(i)
            except BlockError:
                pass
        for j, (kind, off, n) in enumerate(FREES):
            try:
                if kind == "discard":
                    node.discard(off, n)
                else:
                    node.write_zeroes(off, n, may_unmap=kind == "zero-unmap")
                node.flush()
                freed.append(j)
            except BlockError:
                pass
    finally:
        try:
            node.close()
        except BlockError:
            pass
    worse_after = _qemu_corruptions(qemu_img, img)
    if worse_before is not None and not dmg.garbage:
        assert worse_after is not None, "qemu-img can no longer open the image"
        assert worse_after <= worse_before, (
            f"qemu-img check: {worse_before} corruptions before the writes, {worse_after} after")
    if not done and not freed:
        return
    node = registry.open_image(str(img), "qcow2", read_only=True)
    try:
        for i, want in expected_after(done, freed).items():
            off, n = WRITES[i] if isinstance(i, int) else FREES[int(i[1:])][1:]
            buf = bytearray(n)
            node.read(off, memoryview(buf))
            assert buf == want, f"{i}: did not read back"
    finally:
        node.close()



def test_corpus_is_large_and_applies(base, tmp_path):
    """At least 30 kinds, distinct names, and each one really changes the file."""
    assert len(KINDS) >= 30
    assert len({k.name for k in KINDS}) == len(KINDS)
    for dmg in KINDS:
        img = tmp_path / f"{dmg.name}.qcow2"
        make(base[0], img, dmg)
        assert img.read_bytes() != base[0].read_bytes(), f"{dmg.name} changed nothing"
