"""``blockbed img`` against ``qemu-img``: same bytes from create, same JSON from
info/map/check, same verdicts and exit codes from check/compare."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from blockbed.cli import main as blockbed_main
from conftest import REPO, need_tool


def bb(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = blockbed_main(["img", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def q(qemu_img: str, *argv: str, cwd=None) -> tuple[int, str, str]:
    p = subprocess.run([qemu_img, *argv], capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


CREATE_CASES = [
    ["4G"],
    ["-o", "compat=0.10", "1G"],
    ["-o", "cluster_size=512,refcount_bits=1", "100M"],
    ["-o", "cluster_size=2M,refcount_bits=64", "10T"],
    ["-o", "compression_type=zstd,lazy_refcounts=on", "5G"],
    ["-o", "extended_l2=on,cluster_size=16k", "3G"],
    ["0"],
]


@pytest.mark.parametrize("args", CREATE_CASES, ids=lambda a: " ".join(a))
def test_create_is_byte_identical_to_qemu_img(qemu_img, tmp_path, capsys, args):
    ours, theirs = tmp_path / "b.qcow2", tmp_path / "q.qcow2"
    *opts, size = args
    rc, out, err = bb(capsys, "create", "-f", "qcow2", *opts, str(ours), size)
    assert rc == 0, err
    assert q(qemu_img, "create", "-f", "qcow2", *opts, str(theirs), size)[0] == 0
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("o", ["cluster_size=16K,lazy_refcounts=true,refcount_bits=0x10,compat=v3",
                               "extended_l2=y,cluster_size=32768", "lazy_refcounts=maybe",
                               "cluster_size=abc", "cluster_size=-5", "refcount_bits=xyz"])
def test_create_option_values_print_and_fail_like_qemu_img(qemu_img, tmp_path, capsys,
                                                           monkeypatch, o):
    """QemuOpts normalises size and number values in the "Formatting" line and rejects
    ill-typed values before it; same stdout, stderr, status and image bytes."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = bb(capsys, "create", "-f", "qcow2", "-o", o, "b.qcow2", "1M")
    qrc, qout, qerr = q(qemu_img, "create", "-f", "qcow2", "-o", o, "q.qcow2", "1M")
    assert (rc, out.replace("b.qcow2", "X"), err.replace("blockbed img:", "qemu-img:")
            .replace("b.qcow2", "X")) == (qrc, qout.replace("q.qcow2", "X"),
                                          qerr.replace("q.qcow2", "X"))
    if rc == 0:
        assert (tmp_path / "b.qcow2").read_bytes() == (tmp_path / "q.qcow2").read_bytes()


def test_create_with_backing_matches(qemu_img, tmp_path, capsys):
    os.chdir(tmp_path)
    q(qemu_img, "create", "-f", "qcow2", "base.qcow2", "3M")
    rc, out, err = bb(capsys, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "b.qcow2")
    assert rc == 0, err
    rc2, out2, _ = q(qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "q.qcow2")
    assert out.replace("b.qcow2'", "X'") == out2.replace("q.qcow2'", "X'")
    assert Path("b.qcow2").read_bytes() == Path("q.qcow2").read_bytes()


@pytest.fixture
def images(qemu_img, qemu_io, tmp_path):
    """A few images written by qemu: v2, v3 with chain, zero clusters, compressed."""
    os.chdir(tmp_path)
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run(qemu_img, "create", "-f", "qcow2", "base.qcow2", "1M")
    run(qemu_io, "-c", "write -P 7 0 300k", "base.qcow2")
    run(qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "2M")
    run(qemu_io, "-c", "write -P 1 0 70k", "-c", "write -z 1M 64k", "-c", "write -P 2 1200k 4k",
        "top.qcow2")
    run(qemu_img, "create", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4096", "v2.qcow2", "8M")
    run(qemu_io, "-c", "write -P 3 4k 40k", "-c", "write -P 4 6M 1M", "v2.qcow2")
    Path("src.raw").write_bytes(b"\1" * 65536 + bytes(65536) + os.urandom(65536) + b"\2" * 300032)
    run(qemu_img, "convert", "-c", "-O", "qcow2", "src.raw", "comp.qcow2")
    run(qemu_img, "create", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=4096",
        "pre.qcow2", "2M")
    run(qemu_io, "-c", "write -P 9 64k 64k", "pre.qcow2")
    # a 3-deep chain over a raw base, zero-allocated clusters, every preallocation mode
    run(qemu_img, "create", "-f", "raw", "b.raw", "4M")
    run(qemu_io, "-f", "raw", "-c", "write -P 1 0 1M", "-c", "write -P 2 3M 512k", "b.raw")
    run(qemu_img, "create", "-f", "qcow2", "-b", "b.raw", "-F", "raw", "m.qcow2", "6M")
    run(qemu_io, "-c", "write -P 3 512k 1M", "-c", "write -z 3M 64k", "m.qcow2")
    run(qemu_img, "create", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "m.qcow2", "-F",
        "qcow2", "t.qcow2", "8M")
    run(qemu_io, "-c", "write -P 4 0 8k", "-c", "write -z -u 512k 64k", "-c", "discard 1M 64k",
        "t.qcow2")
    extra = ["b.raw", "m.qcow2", "t.qcow2"]
    for mode in ("falloc", "full"):
        run(qemu_img, "create", "-f", "qcow2", "-o", f"preallocation={mode},cluster_size=4096",
            f"p{mode}.qcow2", "2M")
        run(qemu_io, "-c", "write -P 5 64k 64k", "-c", "write -z 128k 8k", "-c",
            "write -z -u 256k 8k", f"p{mode}.qcow2")
        extra.append(f"p{mode}.qcow2")
    return ["base.qcow2", "top.qcow2", "v2.qcow2", "comp.qcow2", "pre.qcow2", "src.raw", *extra]


@pytest.mark.parametrize("cmd", [
    ["info", "--output=json"], ["info", "--output=json", "--backing-chain"], ["info"],
    ["map", "--output=json"], ["map"], ["check", "--output=json"], ["check"],
])
def test_output_equals_qemu_img(qemu_img, images, capsys, cmd):
    for img in images:
        if cmd[0] == "check" and img.endswith(".raw"):
            continue
        rc, out, err = bb(capsys, *cmd, img)
        qrc, qout, qerr = q(qemu_img, *cmd, img)
        assert (rc, out) == (qrc, qout), f"{cmd} {img}:\n{out}\n---- qemu-img:\n{qout}{qerr}"


def _put(path: Path, off: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def _get(path: Path, off: int) -> int:
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(">Q", f.read(8))[0]


@pytest.fixture
def damaged(qemu_img, qemu_io, tmp_path):
    """Images with a leak, a refcount too low, an OFLAG_COPIED mismatch, an L2 entry
    pointing at the L1 table, and a refcount block past the end of the file."""
    os.chdir(tmp_path)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "base.qcow2", "4M"], check=True)
    subprocess.run([qemu_io, "-c", "write -P 1 0 256k", "-c", "write -P 2 1M 64k", "base.qcow2"],
                   check=True, capture_output=True)
    base = Path("base.qcow2")
    l2 = _get(base, 0x30000) & 0x00FFFFFFFFFFFE00
    out = {}
    for name, fn in {
        "leak": lambda p: _put(p, l2 + 8, ">Q", 0),
        "corrupt": lambda p: _put(p, 0x20000 + 5 * 2, ">H", 0),
        "copied": lambda p: _put(p, l2, ">Q", _get(p, l2) & ~(1 << 63)),
        "leak2": lambda p: _put(p, 0x20000 + 6 * 2, ">H", 2),
        "overlap": lambda p: _put(p, l2 + 16, ">Q", 0x30000 | (1 << 63)),
        "rbeof": lambda p: _put(p, 0x10000 + 8, ">Q", 0x10000000),
    }.items():
        p = Path(f"{name}.qcow2")
        shutil.copy(base, p)
        fn(p)
        out[name] = p
    return out


@pytest.mark.parametrize("repair", [None, "leaks", "all"])
@pytest.mark.parametrize("output", ["human", "json"])
def test_check_and_repair_match_qemu_img(qemu_img, damaged, capsys, repair, output):
    for name, path in damaged.items():
        a, b = path.with_name("a-" + path.name), path.with_name("b-" + path.name)
        shutil.copy(path, a)
        shutil.copy(path, b)
        args = (["-r", repair] if repair else []) + [f"--output={output}"]
        rc, out, err = bb(capsys, "check", *args, str(b))
        qrc, qout, qerr = q(qemu_img, "check", *args, str(a))
        assert rc == qrc, f"{name}: {err}{out} vs {qerr}{qout}"
        assert out.replace(str(b), "X") == qout.replace(str(a), "X"), name
        assert err.replace("blockbed img: ", "qemu-img: ").splitlines() == qerr.splitlines(), name
        # after the repair both images check the same way and hold the same data
        assert q(qemu_img, "check", str(a))[:2] == q(qemu_img, "check", str(b))[:2], name
        assert q(qemu_img, "compare", str(a), str(b))[0] == 0, name


def test_convert_raw_to_qcow2_sparse_with_progress(qemu_img, tmp_path, capsys):
    src = tmp_path / "s.raw"
    data = bytearray(6 << 20)
    data[0:100000] = os.urandom(100000)
    data[3 << 20:(3 << 20) + 4096] = b"\xee" * 4096
    src.write_bytes(data)
    dst = tmp_path / "d.qcow2"
    rc, out, err = bb(capsys, "convert", "-p", "-f", "raw", "-O", "qcow2", "-o",
                      "cluster_size=4096", str(src), str(dst))
    assert rc == 0, err
    assert "(100.00/100%)" in out
    assert q(qemu_img, "compare", str(src), str(dst))[0] == 0
    assert q(qemu_img, "check", str(dst))[0] == 0
    # zero regions stay unallocated: 100000 bytes -> 25 clusters, plus one
    info = q(qemu_img, "check", "--output=json", str(dst))[1]
    assert '"allocated-clusters": 26' in info


def test_convert_qcow2_chain_to_raw(qemu_img, images, capsys, tmp_path):
    rc, out, err = bb(capsys, "convert", "-O", "raw", "top.qcow2", "flat.raw")
    assert rc == 0, err
    assert q(qemu_img, "compare", "top.qcow2", "flat.raw")[0] == 0


def test_compare_verdicts_match(qemu_img, tmp_path, capsys):
    os.chdir(tmp_path)
    a = bytearray(os.urandom(1 << 20))
    Path("a.raw").write_bytes(a)
    b = bytearray(a)
    b[300000] ^= 1
    Path("b.raw").write_bytes(b)
    Path("c.raw").write_bytes(a + bytes(65536))
    Path("d.raw").write_bytes(a + b"\1" + bytes(65535))
    q(qemu_img, "convert", "-O", "qcow2", "a.raw", "a.qcow2")
    for x, y, extra in [("a.raw", "a.qcow2", []), ("a.raw", "b.raw", []), ("a.raw", "c.raw", []),
                        ("a.raw", "d.raw", []), ("a.raw", "c.raw", ["-s"])]:
        rc, out, _ = bb(capsys, "compare", *extra, x, y)
        qrc, qout, _ = q(qemu_img, "compare", *extra, x, y)
        assert (rc, out) == (qrc, qout), (x, y, extra)


def test_resize_grow(qemu_img, tmp_path, capsys):
    img = tmp_path / "r.qcow2"
    q(qemu_img, "create", "-f", "qcow2", "-o", "cluster_size=512", str(img), "1M")
    rc, out, err = bb(capsys, "resize", str(img), "+300M")
    assert rc == 0 and out == "Image resized.\n", err
    info = q(qemu_img, "info", "--output=json", str(img))[1]
    assert f'"virtual-size": {(1 << 20) + (300 << 20)}' in info
    assert q(qemu_img, "check", str(img))[0] == 0
    rc, out, err = bb(capsys, "resize", str(img), "1M")
    assert rc == 1 and "--shrink" in err


@pytest.mark.parametrize("argv,needle", [
    (["create", "-f", "qcow2", "-o", "cluster_size=1000", "X", "1M"], "power of two"),
    (["create", "-f", "qcow2", "-o", "compat=0.10,refcount_bits=8", "X", "1M"], "compatibility level"),
    (["create", "-f", "qcow2", "-o", "bogus=1", "X", "1M"], "Invalid parameter"),
    (["create", "-f", "qcow2", "X"], "size"),
    (["info", "does-not-exist.qcow2"], "does-not-exist"),
])
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, argv, needle):
    os.chdir(tmp_path)
    rc, out, err = bb(capsys, *argv)
    assert rc != 0
    assert needle in err
    assert "Traceback" not in err


def test_persistent_bitmaps_listed_counted_and_kept(qemu_img, qemu_io, tmp_path, capsys):
    img = tmp_path / "bm.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "16M"], check=True)
    subprocess.run([qemu_img, "bitmap", "--add", str(img), "b0"], check=True)
    subprocess.run([qemu_img, "bitmap", "--add", "-g", "128k", str(img), "other"], check=True)
    subprocess.run([qemu_io, "-c", "write 0 1M", str(img)], check=True, capture_output=True)
    for cmd in (["info"], ["info", "--output=json"], ["check", "--output=json"]):
        assert bb(capsys, *cmd, str(img))[:2] == q(qemu_img, *cmd, str(img))[:2], cmd
    from blockbed.block import registry
    node = registry.open_image(str(img), "qcow2")
    node.write(5 << 20, b"x" * 100_000)        # blockbed tracks the bitmaps ...
    node.close()
    info = q(qemu_img, "info", "--output=json", str(img))[1]
    assert info.count('"in-use"') == 0           # ... and stores them back on close
    assert q(qemu_img, "check", str(img))[0] == 0
    assert bb(capsys, "info", str(img))[:2] == q(qemu_img, "info", str(img))[:2]


@pytest.mark.parametrize("cluster", [512, 65536, 2 << 20])
def test_convert_mixed_content_all_cluster_sizes(qemu_img, tmp_path, capsys, cluster):
    """Zero granules scattered through data, a size that is not a cluster multiple,
    chunks larger than the async threshold: the output equals the source."""
    import random
    rnd = random.Random(cluster)
    size = (5 << 20) + 3 * 512
    data = bytearray(size)
    pos = 0
    while pos < size:
        ln = rnd.choice([512, 4096, 70000, 300000])
        if rnd.random() < 0.6:
            data[pos:pos + ln] = rnd.randbytes(min(ln, size - pos))
        pos += ln
    src, dst = tmp_path / "s.raw", tmp_path / "d.qcow2"
    src.write_bytes(data)
    rc, _, err = bb(capsys, "convert", "-O", "qcow2", "-o", f"cluster_size={cluster}",
                    str(src), str(dst))
    assert rc == 0, err
    assert q(qemu_img, "compare", "-f", "raw", "-F", "qcow2", str(src), str(dst))[0] == 0
    assert q(qemu_img, "check", str(dst))[0] == 0
    back = tmp_path / "back.raw"
    rc, _, err = bb(capsys, "convert", "-f", "qcow2", "-O", "raw", str(dst), str(back))
    assert rc == 0, err
    assert back.read_bytes() == bytes(data)


def test_check_repairs_dirty_lazy_image_like_qemu(qemu_img, qemu_io, tmp_path, capsys):
    """qemu-io aborts with lazy refcounts: both tools report and repair the same way and
    clear the dirty bit."""
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(a),
                    "8M"], check=True)
    subprocess.run([qemu_io, "-c", "write -P 9 0 300k", "-c", "abort", str(a)],
                   capture_output=True)
    shutil.copy(a, b)
    for args in (["check"], ["check", "-r", "all"]):
        rc, out, err = bb(capsys, *args, str(b))
        qrc, qout, qerr = q(qemu_img, *args, str(a))
        assert (rc, out.replace(str(b), "X"), err) == (qrc, qout.replace(str(a), "X"), qerr)
    assert a.read_bytes()[72:80] == b.read_bytes()[72:80] == bytes(8)


def test_output_into_a_closed_pipe_is_quiet(tmp_path):
    """`blockbed img info X | head -1`: the reader leaving is not an error to report."""
    import shlex
    import sys
    img = tmp_path / "p.qcow2"
    assert blockbed_main(["img", "create", "-q", "-f", "qcow2", str(img), "1M"]) == 0
    cmd = f"{shlex.quote(sys.executable)} -m blockbed img info {shlex.quote(str(img))} | head -c 1"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert p.stderr == "" and p.returncode == 0, p.stderr


@pytest.mark.qemu
@pytest.mark.parametrize("with_size", [True, False])
def test_create_backing_without_format_is_refused_as_qemu_img(tmp_path, with_size):
    """qemu-img 7.2 refuses `create -b base` without -F (no probing of backing files) and
    creates nothing; so must we, with the same message."""
    qemu_img = need_tool("qemu-img")
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "1M"],
                   check=True)
    size = ["1M"] if with_size else []
    q = subprocess.run([qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "q.qcow2", *size],
                       cwd=tmp_path, capture_output=True, text=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    b = subprocess.run([sys.executable, "-m", "blockbed", "img", "create", "-f", "qcow2", "-b",
                        "base.qcow2", "b.qcow2", *size], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert q.returncode == 1 and b.returncode == 1, (q.stderr, b.stderr)
    assert b.stderr.replace("blockbed img:", "qemu-img:").replace("b.qcow2", "q.qcow2").strip() \
        == q.stderr.strip()
    assert not (tmp_path / "b.qcow2").exists() and not (tmp_path / "q.qcow2").exists()


@pytest.mark.qemu
def test_snapshot_with_empty_tag_is_created_and_deleted_as_qemu_img(tmp_path):
    """`snapshot -c ""` used to exit 0 and do nothing (the empty tag read as 'no option');
    qemu-img creates a snapshot whose tag is empty, and `-d ""` deletes it."""
    import re
    qemu_img = need_tool("qemu-img")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    listings = {}
    for who in ("qemu", "blockbed"):
        img = tmp_path / f"{who}.qcow2"
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "1M"], check=True)
        tool = [qemu_img] if who == "qemu" else [sys.executable, "-m", "blockbed", "img"]
        seen = []
        for action in ("-c", "-d"):
            p = subprocess.run([*tool, "snapshot", action, "", str(img)], capture_output=True,
                               text=True, env=env)
            assert p.returncode == 0, p.stderr
            out = subprocess.run([qemu_img, "snapshot", "-l", str(img)], capture_output=True,
                                 text=True, check=True).stdout
            seen.append(re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", out))
        subprocess.run([qemu_img, "check", "-q", str(img)], check=True)
        listings[who] = seen
    assert listings["blockbed"] == listings["qemu"]
    assert "1 " in listings["qemu"][0] and listings["qemu"][1] == ""


@pytest.mark.qemu
def test_deep_backing_chain_opens_past_64_and_fails_in_one_line(tmp_path):
    """A chain of 100 images opens (qemu-img has no 64 limit); past blockbed's recursion guard
    the error is one line, not "Could not open backing file: " once per level."""
    from blockbed.block.qcow2.driver import MAX_BACKING_DEPTH
    qemu_img = need_tool("qemu-img")
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(tmp_path / "c0.qcow2"), "1M"],
                   check=True)
    for i in range(1, MAX_BACKING_DEPTH + 2):
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-u", "-b", f"c{i - 1}.qcow2",
                        "-F", "qcow2", f"c{i}.qcow2", "1M"], check=True, cwd=tmp_path)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 4096 512", str(tmp_path / "c0.qcow2")],
                   check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ok = subprocess.run([sys.executable, "-m", "blockbed", "img", "convert", "-O", "raw",
                         "c100.qcow2", "out.raw"], cwd=tmp_path, capture_output=True, text=True,
                        env=env)
    assert ok.returncode == 0, ok.stderr[:500]
    assert (tmp_path / "out.raw").read_bytes()[4096:4608] == b"\x5a" * 512
    deep = subprocess.run([sys.executable, "-m", "blockbed", "img", "convert", "-O", "raw",
                           f"c{MAX_BACKING_DEPTH + 1}.qcow2", "out2.raw"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert deep.returncode == 1
    lines = deep.stderr.strip().splitlines()
    assert len(lines) == 1 and "Backing chain is too deep" in lines[0], deep.stderr[:500]
    assert "Could not open backing file" not in deep.stderr and "Traceback" not in deep.stderr
