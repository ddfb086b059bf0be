"""Persistent dirty bitmaps against QEMU 7.2.

blockbed writes, QEMU reads the bitmap (``qemu-nbd -B`` + ``nbdinfo --map``);
qemu-io writes, blockbed reads it; ``blockbed img bitmap`` and ``qemu-img
bitmap`` produce the same images; a crash leaves the bitmaps IN_USE and QEMU
agrees they are inconsistent; ``qemu-img check`` stays clean (no leaks).
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from blockbed.block import registry
from blockbed.block.driver import ImageFormatError
from blockbed.block.qcow2.bitmaps import BitmapError
from blockbed.block.qcow2.dirtybitmap import DirtyBitmap
from blockbed.cli import main as blockbed_main
from tests.conftest import need_tool

MiB = 1 << 20


# --- helpers ----------------------------------------------------------------------------
def run(*argv, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if check and p.returncode:
        raise AssertionError(f"{argv} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def bb(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = blockbed_main(["img", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def nbd_tools(qemu_img, qemu_io) -> None:
    need_tool("qemu-nbd")
    need_tool("nbdinfo")


def qemu_dirty(img: Path, name: str) -> list[tuple[int, int]]:
    """The dirty ranges QEMU sees in bitmap ``name`` (qemu-nbd exports it, nbdinfo maps it)."""
    p = run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--json", "--",
            "[", "qemu-nbd", "-r", "-B", name, "-f", "qcow2", img, "]")
    return [(e["offset"], e["length"]) for e in json.loads(p.stdout) if e["type"] & 1]


def blockbed_dirty(img: Path, name: str) -> list[tuple[int, int]]:
    node = registry.open_image(str(img), "qcow2", read_only=True)
    try:
        return list(node.bitmaps.bits(node.bitmaps.lookup(name)).extents())
    finally:
        node.close()


def expected(ranges, granularity: int, size: int) -> list[tuple[int, int]]:
    """Granule-aligned dirty runs a list of changed byte ranges implies (a naive model)."""
    dirty = set()
    for off, ln in ranges:
        dirty.update(range(off // granularity, (off + ln - 1) // granularity + 1))
    out: list[list[int]] = []
    for g in sorted(dirty):
        if out and out[-1][1] == g * granularity:
            out[-1][1] = (g + 1) * granularity
        else:
            out.append([g * granularity, (g + 1) * granularity])
    return [(a, min(b, size) - a) for a, b in out]


def dir_entries(img: Path) -> list[dict]:
    """The bitmap directory as raw fields (name, flags, table entries)."""
    d = img.read_bytes()
    pos = 112
    while True:
        t, ln = struct.unpack(">II", d[pos:pos + 8])
        assert t, "no bitmaps extension"
        if t == 0x23852875:
            nb, _, dsz, doff = struct.unpack(">IIQQ", d[pos + 8:pos + 32])
            break
        pos += 8 + ((ln + 7) & ~7)
    out, q = [], doff
    for _ in range(nb):
        to, ts, fl, _ty, gb, ns, ex = struct.unpack(">QIIBBHI", d[q:q + 24])
        out.append({"name": d[q + 24:q + 24 + ns].decode(), "flags": fl, "gbits": gb,
                    "table": list(struct.unpack(f">{ts}Q", d[to:to + 8 * ts]))})
        q += (24 + ns + 7) & ~7
    return out


def new_image(path: Path, size="16M", *bitmaps: list[str], opts: str | None = None) -> Path:
    run("qemu-img", "create", "-q", "-f", "qcow2", *(["-o", opts] if opts else []), path, size)
    for args in bitmaps:
        run("qemu-img", "bitmap", *args[:-1], path, args[-1])
    return path


def check_clean(img: Path) -> None:
    p = run("qemu-img", "check", "--output=json", img, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)
    assert not r.get("leaks") and not r.get("corruptions"), r


# --- blockbed writes, QEMU reads -----------------------------------------------------------
WRITES = [("w", 0, 1), ("w", 3 * MiB - 100, 200), ("z", 8 * MiB, 512),
          ("z", 9 * MiB, 2 * MiB), ("d", 10 * MiB + 4096, 100),    # a discard that is only a hint
          ("d", 12 * MiB, MiB), ("w", 16 * MiB - 512, 512)]


def apply(node, ops) -> None:
    for op, off, ln in ops:
        if op == "w":
            node.write(off, bytes([0x5A]) * ln)
        elif op == "z":
            node.write_zeroes(off, ln, may_unmap=True)
        else:
            node.discard(off, ln)


def test_blockbed_changes_are_seen_by_qemu(nbd_tools, tmp_path):
    img = new_image(tmp_path / "a.qcow2", "16M", ["--add", "b64k"], ["--add", "-g", "1M", "b1m"],
                    ["--add", "-g", "512", "fine"], ["--add", "--disable", "off"])
    node = registry.open_image(str(img), "qcow2")
    # open read-write: the bitmaps are flagged IN_USE on disk right away
    assert all(e["flags"] & 1 for e in dir_entries(img))
    apply(node, WRITES)
    node.close()
    size = 16 * MiB
    spans = [(off, ln) for _, off, ln in WRITES]
    for name, g in (("b64k", 65536), ("b1m", MiB), ("fine", 512)):
        assert qemu_dirty(img, name) == expected(spans, g, size), name
    assert qemu_dirty(img, "off") == []
    assert [e["flags"] for e in dir_entries(img)] == [2, 2, 2, 0]      # AUTO, IN_USE clear
    check_clean(img)


def test_qemu_io_changes_are_seen_by_blockbed(nbd_tools, tmp_path):
    img = new_image(tmp_path / "q.qcow2", "8M", ["--add", "-g", "128k", "b"],
                    ["--add", "--disable", "off"])
    run("qemu-io", "-c", "write 100k 1k", "-c", "write -z 2M 300k", "-c", "discard 5M 64k",
        img)
    first = [(100 << 10, 1024), (2 * MiB, 300 << 10), (5 * MiB, 64 << 10)]
    assert blockbed_dirty(img, "b") == expected(first, 128 << 10, 8 * MiB)
    assert blockbed_dirty(img, "off") == []
    # blockbed adds to what QEMU stored; QEMU then sees both
    node = registry.open_image(str(img), "qcow2")
    node.write(7 * MiB + 5, b"x")
    node.close()
    both = first + [(7 * MiB + 5, 1)]
    assert qemu_dirty(img, "b") == expected(both, 128 << 10, 8 * MiB)
    assert blockbed_dirty(img, "b") == qemu_dirty(img, "b")
    check_clean(img)


def test_repeated_sessions_free_old_clusters(nbd_tools, tmp_path):
    """Each clean close writes new bitmap clusters and frees the old ones: no leaks,
    and the file does not grow from session to session."""
    img = new_image(tmp_path / "r.qcow2", "4M", ["--add", "-g", "4k", "b"],
                    opts="cluster_size=4096")
    rnd = random.Random(7)
    spans: list[tuple[int, int]] = []
    ends = []
    for i in range(4):
        node = registry.open_image(str(img), "qcow2")
        off, ln = rnd.randrange(4 * MiB - 8192), rnd.randrange(1, 8192)
        node.write(off, b"y" * ln)
        spans.append((off, ln))
        node.close()
        check_clean(img)
        ends.append(img.stat().st_size)
        assert qemu_dirty(img, "b") == expected(spans, 4096, 4 * MiB)
    # the allocation of the data (4 KiB writes) grows the file; bitmap metadata does not
    node = registry.open_image(str(img), "qcow2")
    node.close()
    assert img.stat().st_size == ends[-1]
    check_clean(img)


def test_all_dirty_chunk_uses_the_all_ones_entry(nbd_tools, tmp_path):
    """A bitmap cluster whose bits are all set is stored as table entry 1 (spec
    "Bitmap table": offset 0, bit 0 set); QEMU reads it as all dirty."""
    img = new_image(tmp_path / "o.qcow2", "5M", ["--add", "-g", "512", "b"],
                    opts="cluster_size=512")
    node = registry.open_image(str(img), "qcow2")
    node.write(0, bytes(2 * MiB))               # one 512-byte bitmap cluster covers 2 MiB
    node.write(2 * MiB + 512, b"z")
    node.close()
    table = dir_entries(img)[0]["table"]
    assert table[0] == 1 and table[1] > 1 and table[2] == 0
    assert qemu_dirty(img, "b") == [(0, 2 * MiB), (2 * MiB + 512, 512)]
    check_clean(img)
    # and blockbed reads QEMU's and its own encoding alike
    assert blockbed_dirty(img, "b") == [(0, 2 * MiB), (2 * MiB + 512, 512)]


def test_resize_grows_bitmaps_like_qemu(nbd_tools, tmp_path, capsys):
    """Growing keeps the bits; the new area is clean (QEMU 7.2 does not dirty it)."""
    a = new_image(tmp_path / "a.qcow2", "4M", ["--add", "-g", "1M", "b"])
    b = new_image(tmp_path / "b.qcow2", "4M", ["--add", "-g", "1M", "b"])
    run("qemu-io", "-c", "write 1M 4k", a)
    run("qemu-io", "-c", "write 1M 4k", b)
    run("qemu-img", "resize", a, "+3M")
    assert bb(capsys, "resize", b, "+3M")[0] == 0
    assert qemu_dirty(b, "b") == qemu_dirty(a, "b") == [(MiB, MiB)]
    node = registry.open_image(str(b), "qcow2")
    node.write(6 * MiB, b"n")                 # the grown area is tracked
    node.close()
    assert qemu_dirty(b, "b") == [(MiB, MiB), (6 * MiB, MiB)]
    check_clean(b)


# --- crash: IN_USE stays, QEMU and blockbed refuse the bitmap -----------------------------------
_CRASH = """
import os, sys
from blockbed.block import registry
node = registry.open_image(sys.argv[1], "qcow2")
node.write(0, b"c" * 4096)
node.flush()
os._exit(0)          # no close: the bitmaps are never stored
"""


def test_crash_leaves_bitmaps_in_use_and_inconsistent(nbd_tools, tmp_path, capsys):
    img = new_image(tmp_path / "c.qcow2", "8M", ["--add", "b"], ["--add", "--disable", "d"])
    run("qemu-io", "-c", "write 1M 4k", img)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    subprocess.run([sys.executable, "-c", _CRASH, str(img)], check=True, env=env)
    info = json.loads(run("qemu-img", "info", "--output=json", img).stdout)
    flags = {b["name"]: b["flags"] for b in info["format-specific"]["data"]["bitmaps"]}
    assert flags == {"b": ["in-use", "auto"], "d": ["in-use"]}
    for name in ("b", "d"):
        p = run("qemu-nbd", "-r", "-B", name, "-f", "qcow2", img, check=False)
        assert p.returncode and f"Bitmap '{name}' is inconsistent and cannot be used" in p.stderr
        with pytest.raises(BitmapError, match="inconsistent"):
            blockbed_dirty(img, name)
    # info is identical; a read-write session keeps them flagged (QEMU never trusts them)
    for cmd in (["info"], ["info", "--output=json"]):
        assert bb(capsys, *cmd, img)[1] == run("qemu-img", *cmd, img).stdout, cmd
    node = registry.open_image(str(img), "qcow2")
    node.write(2 * MiB, b"w")
    node.close()
    assert [e["flags"] for e in dir_entries(img)] == [3, 1]
    # growing is refused while a bitmap is inconsistent (as QEMU does)
    rc, _, err = bb(capsys, "resize", img, "+1M")
    assert rc == 1 and "Bitmap 'b' is inconsistent and cannot be used" in err
    p = run("qemu-img", "resize", img, "+1M", check=False)
    assert p.returncode == 1 and "Bitmap 'b' is inconsistent and cannot be used" in p.stderr
    # removing is the way out, and the image checks clean
    assert bb(capsys, "bitmap", "--remove", img, "b")[0] == 0
    assert [e["name"] for e in dir_entries(img)] == ["d"]
    assert run("qemu-img", "check", img, check=False).returncode in (0, 3)   # the crash may leak


# --- img bitmap against qemu-img bitmap ------------------------------------------------------------
BITMAP_CASES = [
    ["--add", "new"], ["--add", "-g", "64k", "new"], ["--add", "-g", "2G", "new"],
    ["--add", "-g", "0", "new"], ["--add", "--disable", "new"], ["--add", "--add", "new"],
    ["--add", "b0"], ["--add", ""], ["--add", "-g", "1000", "x"], ["--add", "-g", "256", "x"],
    ["--add", "-g", "4G", "x"], ["--add", "-g", "abc", "x"], ["--add", "n" * 1024],
    ["--remove", "b0"], ["--remove", "bad"], ["--remove", "nope"], ["--remove", "--remove", "b0"],
    ["--remove", "--add", "b0"],
    ["--clear", "b0"], ["--clear", "bad"], ["--enable", "off"], ["--disable", "b0"],
    ["--disable", "bad"], ["--enable", "bad"],
    ["--merge", "b0", "off"], ["--merge", "b0", "bad"], ["--merge", "bad", "b0"],
    ["--merge", "nope", "b0"], ["--merge", "b0", "nope"], ["--add", "--merge", "b0", "y"],
    ["--merge", "b0", "-b", "@SRC", "off"], ["--merge", "b0", "-b", "@SRC", "-F", "raw", "off"],
    ["--merge", "big", "-b", "@BIG", "off"],
    ["--clear", "-g", "1k", "b0"], ["--clear", "-F", "qcow2", "b0"],
    ["--clear", "-b", "@SRC", "b0"], ["b0"], ["--clear"],
]


def _make_base(path: Path) -> Path:
    new_image(path, "16M", ["--add", "b0"], ["--add", "-g", "1M", "bad"],
              ["--add", "--disable", "off"])
    run("qemu-io", "-c", "write 0 64k", "-c", "write 5M 3M", path)
    # flag "bad" IN_USE as a crashed writer leaves it
    d = bytearray(path.read_bytes())
    ext = d.index(struct.pack(">I", 0x23852875), 104)
    doff = struct.unpack(">Q", d[ext + 24:ext + 32])[0]
    pos = doff
    while True:
        ns = struct.unpack(">H", d[pos + 18:pos + 20])[0]
        if d[pos + 24:pos + 24 + ns] == b"bad":
            d[pos + 15] |= 1
            break
        pos += (24 + ns + 7) & ~7
    path.write_bytes(d)
    return path


@pytest.mark.parametrize("args", BITMAP_CASES, ids=lambda a: " ".join(a)[:40])
def test_img_bitmap_matches_qemu_img(qemu_img, qemu_io, tmp_path, capsys, args):
    src = new_image(tmp_path / "src.qcow2", "16M", ["--add", "b0"])
    run("qemu-io", "-c", "write 9M 1M", src)
    big = new_image(tmp_path / "big.qcow2", "32M", ["--add", "big"])
    subst = {"@SRC": str(src), "@BIG": str(big)}
    argv = [subst.get(a, a) for a in args]
    opts, name = argv[:-1], argv[-1]
    if args in (["b0"], ["--clear"]):
        opts, name = argv, None
    results = []
    for tool in ("qemu", "blockbed"):
        img = _make_base(tmp_path / f"{tool}.qcow2")
        tail = [str(img)] + ([name] if name is not None else [])
        if tool == "qemu":
            p = run(qemu_img, "bitmap", *opts, *tail, check=False)
            rc, err = p.returncode, p.stderr
        else:
            rc, _, err = bb(capsys, "bitmap", *opts, *tail)
            err = err.replace("blockbed img: ", "qemu-img: ")
        err = re.sub(r"#block\d+", "#blockN", err.replace(str(img), "IMG"))
        info = run(qemu_img, "info", "--output=json", img).stdout.replace(str(img), "IMG")
        dirty = [qemu_dirty_or_none(img, b) for b in ("b0", "off", "new", "y")]
        results.append((rc, err, json.loads(info), dirty))
        check_clean(img)
    assert results[1] == results[0]


def qemu_dirty_or_none(img: Path, name: str):
    """Dirty ranges of a consistent bitmap, None if QEMU cannot export it."""
    if not _has_tool("qemu-nbd") or not _has_tool("nbdinfo"):
        return None
    p = run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--json", "--",
            "[", "qemu-nbd", "-r", "-B", name, "-f", "qcow2", img, "]", check=False)
    if p.returncode:
        return None
    return [(e["offset"], e["length"]) for e in json.loads(p.stdout) if e["type"] & 1]


def _has_tool(name: str) -> bool:
    import shutil
    return shutil.which(name) is not None


def test_img_bitmap_refusals(qemu_img, tmp_path, capsys):
    v2 = new_image(tmp_path / "v2.qcow2", "1M", opts="compat=0.10")
    raw = tmp_path / "r.raw"
    raw.write_bytes(bytes(MiB))
    for img, fmt, needle in ((v2, [], "Cannot store dirty bitmaps in qcow2 v2 files"),
                             (raw, ["-f", "raw"], "Can't store persistent bitmaps to #block")):
        rc, _, err = bb(capsys, "bitmap", "--add", *fmt, img, "b")
        p = run(qemu_img, "bitmap", "--add", *fmt, img, "b", check=False)
        assert rc == p.returncode == 1
        assert needle in err and needle in p.stderr
        assert "Traceback" not in err
    big = new_image(tmp_path / "big.qcow2", "64T")
    rc, _, err = bb(capsys, "bitmap", "--add", "-g", "512", big, "b")
    assert rc == 1 and "Too much space will be occupied by the bitmap" in err


def test_info_and_check_identical_after_blockbed_stores(qemu_img, tmp_path, capsys):
    img = new_image(tmp_path / "i.qcow2", "16M", ["--add", "b0"], ["--add", "-g", "128k", "o"])
    node = registry.open_image(str(img), "qcow2")
    node.write(5 * MiB, b"x" * 100_000)
    node.close()
    for cmd in (["info"], ["info", "--output=json"], ["check"], ["check", "--output=json"]):
        rc, out, _ = bb(capsys, *cmd, img)
        p = run(qemu_img, *cmd, img, check=False)
        assert (rc, out) == (p.returncode, p.stdout), cmd
    assert '"in-use"' not in run(qemu_img, "info", "--output=json", img).stdout


def test_malformed_directory_is_a_clear_error(qemu_img, tmp_path, capsys):
    img = new_image(tmp_path / "m.qcow2", "1M", ["--add", "b"])
    d = bytearray(img.read_bytes())
    ext = d.index(struct.pack(">I", 0x23852875), 104)
    doff = struct.unpack(">Q", d[ext + 24:ext + 32])[0]
    d[doff + 12] |= 0x80                    # a reserved flag
    img.write_bytes(d)
    with pytest.raises(ImageFormatError, match="doesn't satisfy the constraints"):
        registry.open_image(str(img), "qcow2", read_only=True)
    rc, _, err = bb(capsys, "info", img)
    assert rc == 1 and "Bitmap 'b' doesn't satisfy the constraints" in err
    assert "Traceback" not in err


# --- the in-memory bitmap ---------------------------------------------------------------------------
@pytest.mark.parametrize("gbits", [9, 12, 16])
def test_dirty_bitmap_matches_a_naive_model(gbits):
    rnd = random.Random(gbits)
    g = 1 << gbits
    size = 3 * MiB + 1234
    bm = DirtyBitmap(size, g)
    spans = []
    for _ in range(60):
        off = rnd.randrange(size)
        ln = rnd.choice([1, 7, g - 1, g, 3 * g + 5, 100_000])
        bm.set_range(off, ln)
        spans.append((off, min(ln, size - off)))
        assert list(bm.extents()) == expected(spans, g, size)
    model = expected(spans, g, size)
    assert bm.count() == sum(-(-ln // g) for _, ln in model)
    # another granularity: merging widens to the coarser granules
    coarse = DirtyBitmap(size, g * 4)
    coarse.merge(bm)
    assert list(coarse.extents()) == expected(model, g * 4, size)
    fine = DirtyBitmap(size, g)
    fine.merge(bm)
    assert fine.data == bm.data
    # chunks: serialised bytes round-trip and the all-ones/zero states are recognised
    back = DirtyBitmap(size, g)
    cs = 512
    for i in range(-(-len(bm.data) // cs)):
        st = bm.chunk_state(i, cs)
        back.load_chunk(i, cs, None if st == 1 else bm.chunk(i, cs))
    assert back.data == bm.data
    bm.resize(size * 2)
    assert list(bm.extents()) == model
    bm.clear()
    assert bm.count() == 0 and list(bm.extents()) == []


# --- crash sweep over the open, the writes and the store on close --------------------------------
def test_crash_sweep_bitmap_store_is_safe():
    """Every crash state of a session (IN_USE marking at open, writes, the store at
    close) opens and checks clean (leaks allowed), keeps every durable write, and its
    bitmaps are flagged IN_USE, dropped (the autoclear bit was off), or complete:
    empty before the session, every change after the header switched to the new
    directory."""
    import logging
    from blockbed.block.crash.overlay import WorkingImage
    from blockbed.block.crash.session import Recording, create_image
    from blockbed.block.crash.states import state_pieces
    from blockbed.block.crash.workload import WorkloadConfig, run_workload
    from blockbed.block.memory import MemoryDriver
    from blockbed.block.qcow2.driver import Qcow2Driver

    logging.getLogger("blockbed.qcow2").setLevel(logging.CRITICAL)
    size = 8 * MiB
    mem = MemoryDriver(create_image("qcow2", size, {"cluster_size": 4096}))
    drv = Qcow2Driver(mem, options={"backing": None})
    drv.bitmaps.add("b", 4096)
    drv.bitmaps.add("d", 65536)
    drv.bitmaps.set_enabled("d", False)
    drv.close()
    rec = Recording.in_memory("qcow2", size, base=bytes(mem.buf))
    run_workload(rec.backend, WorkloadConfig(ops=60, seed=5, region_sectors=2048,
                                             lba_stride=4, max_sectors=16))
    root = rec.backend.root
    final = list(root.bitmaps.bits(root.bitmaps.get("b")).extents())
    assert final
    assert rec.backend.close() == 0
    res, _, states = rec.sweep(states=200, seed=3)
    assert res.violations == [], res.violations[:3]
    work = WorkingImage(rec.base, rec.log)
    seen = {"in-use": 0, "empty": 0, "final": 0, "dropped": 0}
    for st in states:
        work.advance(st.base)
        with work.overlay(state_pieces(rec.log, st, 3)) as node:
            view = Qcow2Driver(node, read_only=True, options={"backing": None})
            b, d = view.bitmaps.get("b"), view.bitmaps.get("d")
            if b is None:
                # the autoclear bit is off while the directory is flagged in place:
                # a crash there drops the extension, as in QEMU (nothing is trusted)
                assert d is None and not view.bitmaps, st.id
                seen["dropped"] += 1
                continue
            assert b.inconsistent == d.inconsistent, st.id
            if b.inconsistent:
                seen["in-use"] += 1
                continue
            got = list(view.bitmaps.bits(b).extents())
            assert got in ([], final), st.id
            assert list(view.bitmaps.bits(d).extents()) == []
            seen["empty" if not got else "final"] += 1
    assert seen["in-use"] and seen["empty"] and seen["final"], seen


# --- img convert --bitmaps ---------------------------------------------------------------------
def _info_wo_paths(img: Path) -> dict:
    info = json.loads(run("qemu-img", "info", "--output=json", img).stdout)
    for k in ("filename", "actual-size"):
        info.pop(k, None)
    return info


def test_convert_bitmaps_copies_like_qemu_img(nbd_tools, tmp_path, capsys):
    """`convert --bitmaps`: the target gets every bitmap with its granularity, enabled
    state and bits -- the same image info and dirty extents as qemu-img's output."""
    src = new_image(tmp_path / "s.qcow2", "8M", ["--add", "b0"],
                    ["--add", "-g", "1M", "--disable", "b1"])
    run("qemu-io", "-c", "write 0 64k", "-c", "write 3M 4k", "-c", "write 7M 1k", src)
    ours, theirs = tmp_path / "o.qcow2", tmp_path / "q.qcow2"
    rc, _, err = bb(capsys, "convert", "--bitmaps", "-O", "qcow2", src, ours)
    assert rc == 0, err
    run("qemu-img", "convert", "--bitmaps", "-O", "qcow2", src, theirs)
    assert _info_wo_paths(ours) == _info_wo_paths(theirs)
    for name in ("b0", "b1"):
        assert blockbed_dirty(ours, name) == blockbed_dirty(theirs, name) == \
            blockbed_dirty(src, name)
        assert qemu_dirty(ours, name) == qemu_dirty(theirs, name)
    check_clean(ours)
    # -n into an image that already has them: QEMU's error
    rc, _, err = bb(capsys, "convert", "--bitmaps", "-n", "-O", "qcow2", src, ours)
    assert rc == 1 and "Failed to create bitmap b1: Bitmap already exists: b1" in err


def test_convert_bitmaps_refusals_and_broken_bitmaps(tmp_path, capsys, qemu_img):
    src = new_image(tmp_path / "s.qcow2", "4M", ["--add", "b0"], ["--add", "b1"])
    raw = tmp_path / "r.raw"
    raw.write_bytes(bytes(4 * MiB))
    cases = [(["--skip-broken-bitmaps", "-O", "qcow2", src], "requires --bitmaps"),
             (["--bitmaps", "-O", "raw", src], "Format driver 'raw' does not support bitmaps"),
             (["--bitmaps", "-f", "raw", "-O", "qcow2", raw], "Source lacks bitmap support")]
    for i, (args, msg) in enumerate(cases):
        out = tmp_path / f"x{i}"
        rc, _, err = bb(capsys, "convert", *args, out)
        q = run("qemu-img", "convert", *args, tmp_path / f"q{i}", check=False)
        assert rc == q.returncode == 1 and msg in err and msg in q.stderr, (args, err, q.stderr)
        assert not out.exists()
    # a crash leaves both bitmaps inconsistent
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    subprocess.run([sys.executable, "-c", _CRASH, str(src)], check=True, env=env)
    rc, _, err = bb(capsys, "convert", "--bitmaps", "-O", "qcow2", src, tmp_path / "y")
    q = run("qemu-img", "convert", "--bitmaps", "-O", "qcow2", src, tmp_path / "qy", check=False)
    assert rc == q.returncode == 1
    assert err.replace("blockbed img:", "qemu-img:") == q.stderr
    assert not (tmp_path / "y").exists()
    rc, _, err = bb(capsys, "convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", src,
                    tmp_path / "z")
    q = run("qemu-img", "convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", src,
            tmp_path / "qz")
    assert rc == 0 and err.replace("blockbed img:", "qemu-img:") == q.stderr
    assert _info_wo_paths(tmp_path / "z") == _info_wo_paths(tmp_path / "qz")
