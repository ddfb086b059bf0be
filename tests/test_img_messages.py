"""``blockbed img`` errors against qemu-img's for the same command and file: the same
words, each error line carrying exactly one ``blockbed img:`` prefix where qemu-img has
``qemu-img:`` (never qemu-img's own name, never doubled, never missing) -- issue #12."""

from __future__ import annotations

import subprocess

import pytest

from blockbed.cli import main as blockbed_main


def _blockbed(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = blockbed_main(["img", *argv])
    return rc, capsys.readouterr().err


def _same_as_qemu(qemu_img: str, capsys, argv: list[str], cwd) -> str:
    q = subprocess.run([qemu_img, *argv], capture_output=True, text=True, cwd=cwd)
    rc, err = _blockbed(capsys, argv)
    assert "qemu-img" not in err and "blockbed img: blockbed img:" not in err, err
    assert (rc, err.replace("blockbed img: ", "qemu-img: ").strip()) == \
        (q.returncode, q.stderr.strip()), argv
    return err


@pytest.fixture
def images(qemu_img, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "q.qcow2", "1M"], check=True)
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", "r.raw", "1M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write 0 64k", "q.qcow2"], check=True,
                   capture_output=True)
    subprocess.run([qemu_img, "convert", "-c", "-O", "qcow2", "q.qcow2", "c.qcow2"], check=True)
    return tmp_path


@pytest.mark.qemu
@pytest.mark.parametrize("argv", [
    ["check", "r.raw"],                                   # was "qemu-img: ..."
    ["snapshot", "-a", "nope", "q.qcow2"],                # was "qemu-img: ... Can't find"
    ["snapshot", "-d", "nope", "q.qcow2"],
    ["map", "c.qcow2"],                                   # was "qemu-img: File contains ..."
    ["compare", "nope", "q.qcow2"],                       # had no prefix at all
    ["compare", "q.qcow2", "nope"],
    ["bitmap", "--add", "-g", "3x", "q.qcow2", "b0"],     # two lines, one prefix each
], ids=lambda a: " ".join(a))
def test_error_matches_qemu_img_with_one_prefix(qemu_img, images, capsys, argv):
    err = _same_as_qemu(qemu_img, capsys, argv, images)
    assert err.startswith("blockbed img: ")
