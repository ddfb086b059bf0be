"""``blockbed img`` errors against qemu-img's for the same command and file: the same
words, each error line carrying exactly one ``blockbed img:`` prefix where qemu-img has
``qemu-img:`` (never qemu-img's own name, never doubled, never missing) -- issue #12."""

from __future__ import annotations

import json
import os
import struct
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


def _both(qemu_img: str, capsys, argv_of, after) -> None:
    """Run qemu-img, then blockbed img, with ``argv_of(tool)``; the exit status, stdout,
    stderr (prefix and ``tool`` in file names normalised) and ``after(tool)`` -- the state
    of the files, which it may clean up -- must be the same."""
    results = []
    for tool in ("q", "b"):
        argv = argv_of(tool)
        if tool == "q":
            p = subprocess.run([qemu_img, *argv], capture_output=True, text=True)
            rc, out, err = p.returncode, p.stdout, p.stderr
        else:
            capsys.readouterr()
            rc = blockbed_main(["img", *argv])
            out, err = capsys.readouterr()
            assert "qemu-img" not in err and "blockbed img: blockbed img:" not in err, err
            err = err.replace("blockbed img: ", "qemu-img: ")
        results.append((rc, out, err.replace(f"{tool}-x", "X").strip(), after(tool)))
    assert results[1] == results[0]


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


CREATE_CASES = [
    "-b base.qcow2 ov.qcow2",                    # no -F: refused, naming the detected format
    "-b base.qcow2 ov.qcow2 1M",
    "-o backing_file=base.qcow2 ov.qcow2",
    "-u -b base.qcow2 ov.qcow2 1M",              # -u without -F: refused too (was created)
    "-u -b base.qcow2 ov.qcow2",
    "-u -b base.qcow2 -F qcow2 ov.qcow2",        # -u: no size from the backing file
    "-b nonexist.qcow2 ov.qcow2 1M",             # + "Could not open backing image."
    "-b nonexist.qcow2 -F qcow2 sub/ov.qcow2",   # relative to the new image's directory
    "-b ov.qcow2 -F qcow2 ov.qcow2 1M",          # its own backing file
    "-o backing_file= ov.qcow2 1M",              # empty name
    "-b r196.raw -F raw ov.qcow2",               # size: the backing file's, whole sectors
    "-F qcow2 ov.qcow2 1M",                      # a format without a file
    "-o cluster_size=3x -b nonexist ov.qcow2",   # option values are checked first
    "ov.qcow2",
    "-b ../base.qcow2 -F qcow2 sub/ov.qcow2",
    "-o size=2M ov.qcow2",                       # -o size: the other way to say the size
    "-o size=2M ov.qcow2 1M",                    # ... but only one of them
    "-o size=abc ov.qcow2",
    "-o size=2M -b base.qcow2 -F qcow2 ov.qcow2",
]


@pytest.mark.qemu
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
@pytest.mark.parametrize("args", CREATE_CASES)
def test_create_with_backing_file_as_qemu_img(qemu_img, tmp_path, monkeypatch, capsys, fmt,
                                              args):
    """The checks of QEMU 7.2 bdrv_img_create, in its order and words; raw refuses -b, -F
    and the backing options as qemu-img does."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "base.qcow2", "1M"], check=True)
    (tmp_path / "r196.raw").write_bytes(bytes(196616))
    argv = ["create", "-f", fmt, *args.split()]
    made = [p for p in ("ov.qcow2", "sub/ov.qcow2") if p in argv]

    def after(tool):
        there = [os.path.exists(m) for m in made]
        for m, e in zip(made, there):
            if e:
                os.unlink(m)
        return there
    _both(qemu_img, capsys, lambda tool: argv, after)


def _damage(p: str, kind: str) -> None:
    """The three header damages of issue #12, as struct edits of a qemu-img image."""
    with open(p, "r+b") as f:
        if kind == "backing-offset-1TiB":
            f.seek(8)
            f.write(struct.pack(">QI", 1 << 40, 10))
        elif kind == "unknown-extension-1MiB":
            f.seek(100)
            f.seek(struct.unpack(">I", f.read(4))[0])
            f.write(struct.pack(">II", 0x12345678, 1 << 20))
        else:
            f.truncate(100)


OPENERS = [["info", "{}"], ["check", "{}"], ["map", "{}"], ["convert", "-O", "raw", "{}", "o.raw"],
           ["compare", "{}", "{}"], ["snapshot", "-l", "{}"], ["resize", "{}", "2M"],
           ["bitmap", "--add", "{}", "b0"]]


@pytest.mark.qemu
@pytest.mark.parametrize("argv", OPENERS, ids=lambda a: a[0])
@pytest.mark.parametrize("kind", ["missing", "backing-offset-1TiB", "unknown-extension-1MiB",
                                  "100-bytes"])
def test_open_errors_as_qemu_img(qemu_img, tmp_path, monkeypatch, capsys, kind, argv):
    """Every subcommand names the image as qemu-img's img_open does, "Could not open 'X': "
    before the reason -- for a missing file the reason names it again, as in qemu-img --
    and the reason names the field that is wrong."""
    monkeypatch.chdir(tmp_path)
    if kind != "missing":
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "x.qcow2", "1M"], check=True)
        _damage("x.qcow2", kind)
    _same_as_qemu(qemu_img, capsys, [a.replace("{}", "x.qcow2") for a in argv], tmp_path)


@pytest.mark.qemu
def test_convert_cannot_create_output(qemu_img, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "x.qcow2", "1M"], check=True)
    for fmt in ("qcow2", "raw"):
        _same_as_qemu(qemu_img, capsys, ["convert", "-O", fmt, "x.qcow2",
                                         str(tmp_path / "no" / "o")], tmp_path)


@pytest.mark.qemu
@pytest.mark.parametrize("argv", [
    ["info", "-f", "foo", "x.qcow2"],                # "Unknown driver" (was format=foo: ...)
    ["create", "-f", "foo", "n.img", "1M"],          # "n.img: Unknown file format 'foo'"
    ["convert", "-O", "foo", "x.qcow2", "o.img"],    # checked after the source is open
    ["convert", "-O", "foo", "nope", "o.img"],
    ["create", "-f", "qcow2", "n.img", "abc"],       # img_create's cvtnum message
    ["resize", "x.qcow2", "abc"],                    # resize's QemuOpts message
    ["resize", "x.qcow2", "-512k"],                  # a relative size, not an option
    ["resize", "x.qcow2", "+1.5M"],
], ids=lambda a: " ".join(a))
def test_format_and_size_errors_as_qemu_img(qemu_img, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    for name in ("q-x.qcow2", "b-x.qcow2"):
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", name, "1M"], check=True)

    def after(tool):
        info = subprocess.run([qemu_img, "info", "--output=json", f"{tool}-x.qcow2"],
                              capture_output=True, text=True, check=True).stdout
        made = os.path.exists("n.img")
        for junk in ("n.img", "o.img"):
            if os.path.exists(junk):
                os.unlink(junk)
        return json.loads(info)["virtual-size"], made
    _both(qemu_img, capsys, lambda tool: [a.replace("x.qcow2", f"{tool}-x.qcow2") for a in argv],
          after)


@pytest.mark.qemu
@pytest.mark.parametrize("field,offset,width,value", [
    ("crypt_method", 32, 4, 7),                   # "Unsupported encryption method 7"
    ("crypt_method", 32, 4, 0xFFFFFFFF),          # printed as a C int: -1
    ("nb_snapshots", 60, 4, 0x10001),             # "Snapshot table too large"
    ("compression_type", 104, 1, 1),              # zstd without its incompatible bit
    ("header_length", 100, 4, 0xFFFF),            # an extension header across the end
    ("header_length", 100, 4, 0xFFFC),
    ("incompatible_features", 72, 8, 0x64),       # unknown bits as one mask: "... 60"
    ("incompatible_features", 72, 8, 1 << 63),
], ids=lambda v: str(v))
def test_header_field_messages_as_qemu_img(qemu_img, tmp_path, monkeypatch, capsys, field,
                                           offset, width, value):
    """A header field edited with struct in a qemu-img image is refused in qemu-img's
    words (they were blockbed's own: "method: 7", "Too many snapshots", "compression_type
    field is set but ...")."""
    monkeypatch.chdir(tmp_path)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "x.qcow2", "1M"], check=True)
    with open("x.qcow2", "r+b") as f:
        f.seek(offset)
        f.write(value.to_bytes(width, "big"))
    _same_as_qemu(qemu_img, capsys, ["info", "x.qcow2"], tmp_path)


@pytest.mark.qemu
@pytest.mark.parametrize("argv", [
    ["snapshot", "-l", "-c", "s", "q.qcow2"],       # argparse said "not allowed with"
    ["snapshot", "-c", "s", "-c", "t", "q.qcow2"],  # the same action twice, too
    ["snapshot", "-l", "r.raw"],                     # raw: an empty list ...
    ["snapshot", "-c", "s", "r.raw"],                # ... and each action's own failure
    ["snapshot", "-a", "s", "r.raw"],
    ["snapshot", "-d", "s", "r.raw"],
], ids=lambda a: " ".join(a))
def test_snapshot_refusals_as_qemu_img(qemu_img, images, capsys, argv):
    """(was: "Format 'raw' does not support internal snapshots" for every action)"""
    q = subprocess.run([qemu_img, *argv], capture_output=True, text=True, cwd=images)
    rc, err = _blockbed(capsys, argv)
    # qemu-img's probing warning for a raw image opened read-write is not blockbed's
    want = "\n".join(l for l in q.stderr.splitlines()
                     if not l.startswith(("WARNING:", "         ")))
    assert (rc, err.replace("blockbed img", "qemu-img").strip()) == (q.returncode, want.strip())
