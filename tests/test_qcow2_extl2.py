"""qcow2 extended L2 entries (subcluster allocation) against QEMU 7.2.

The strongest check here is metadata-exact: the same operations applied by
qemu-io and by blockbed to two identical fresh images must give the same
``qemu-img map --output=json`` (same subcluster states *and* host offsets),
a clean ``qemu-img check`` and identical contents.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from blockbed import trace
from blockbed.block import registry
from blockbed.block.driver import BlockError, CorruptImageError
from blockbed.cli import main as blockbed_main
from qcow2_helpers import blockbed_contents, raw_contents, run_workload

SIZE = 4 << 20


def bb(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = blockbed_main(["img", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def q(tool: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool, *argv], capture_output=True, text=True)


def _create(qemu_img: str, path: Path, size: int = SIZE, opts: str = "",
            extl2: bool = True) -> None:
    o = f"extended_l2={'on' if extl2 else 'off'}" + ("," + opts if opts else "")
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", o, str(path), str(size)],
                   check=True)


def _backing(qemu_img: str, qemu_io: str, d: Path) -> str:
    base = d / "base.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(base), str(SIZE - (512 << 10))],
                   check=True)
    subprocess.run([qemu_io, "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 2M 1536k",
                    str(base)], check=True, capture_output=True)
    return "backing_file=base.qcow2,backing_fmt=qcow2"


def _ops(seed: int, n: int, cluster: int, size: int) -> list[tuple[str, int, int, int]]:
    """Random operations biased to subcluster sizes (cluster/32) and unaligned edges."""
    rnd = random.Random(seed)
    sc = cluster // 32
    out = []
    for _ in range(n):
        off = rnd.randrange(0, size // 512) * 512
        ln = min(size - off, rnd.choice([512, 1024, sc, 2 * sc + 1024, 4096, cluster,
                                         3 * cluster + 4096, 300 << 10]))
        k = rnd.random()
        if k < 0.55:
            out.append(("write", off, ln, rnd.randrange(1, 256)))
        elif k < 0.75:
            out.append(("zero", off, ln, 0))
        elif k < 0.85:
            out.append(("zero", off, ln, 1))        # may unmap
        else:
            out.append(("discard", off, ln, 0))
    return out


def _qemu_io_args(ops) -> list[str]:
    args = []
    for kind, off, ln, arg in ops:
        if kind == "write":
            args += ["-c", f"write -P {arg} {off} {ln}"]
        elif kind == "zero":
            args += ["-c", f"write -z {'-u ' if arg else ''}{off} {ln}"]
        else:
            args += ["-c", f"discard {off} {ln}"]
    return args


def _apply(path: Path, ops) -> None:
    node = registry.open_image(str(path), "qcow2")
    try:
        for kind, off, ln, arg in ops:
            if kind == "write":
                node.write(off, bytes([arg]) * ln)
            elif kind == "zero":
                node.write_zeroes(off, ln, may_unmap=bool(arg))
            else:
                node.discard(off, ln)
    finally:
        node.close()


def _map(qemu_img: str, path: Path) -> str:
    return q(qemu_img, "map", "--output=json", str(path)).stdout


CASES = {
    # name: (cluster, backing, extra create options, size)
    "64k": (65536, False, "", SIZE),
    "64k-backing": (65536, True, "", SIZE),
    "16k-backing": (16384, True, "", SIZE),
    "64k-prealloc-backing": (65536, True, "preallocation=metadata", SIZE),
    "2m-unaligned-size": (2 << 20, False, "", (6 << 20) - 1536),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_operations_same_metadata_as_qemu(qemu_img, qemu_io, tmp_path, name):
    cluster, backing, extra, size = CASES[name]
    opts = f"cluster_size={cluster}" + ("," + extra if extra else "")
    if backing:
        opts += "," + _backing(qemu_img, qemu_io, tmp_path)
    theirs, ours = tmp_path / "q.qcow2", tmp_path / "b.qcow2"
    _create(qemu_img, theirs, size, opts)
    _create(qemu_img, ours, size, opts)
    ops = _ops(sum(map(ord, name)), 50, cluster, size)
    subprocess.run([qemu_io, *_qemu_io_args(ops), str(theirs)], check=True, capture_output=True)
    _apply(ours, ops)
    chk = q(qemu_img, "check", str(ours))
    assert chk.returncode == 0 and "No errors were found" in chk.stdout, chk.stdout + chk.stderr
    assert q(qemu_img, "compare", str(theirs), str(ours)).returncode == 0
    assert _map(qemu_img, ours) == _map(qemu_img, theirs)


@pytest.mark.parametrize("backing", [False, True])
def test_qemu_written_image_reads_identically(qemu_img, qemu_io, tmp_path, capsys, backing):
    img = tmp_path / "q.qcow2"
    opts = _backing(qemu_img, qemu_io, tmp_path) if backing else ""
    _create(qemu_img, img, SIZE, opts)
    ops = _ops(5 + backing, 60, 65536, SIZE)
    subprocess.run([qemu_io, *_qemu_io_args(ops), str(img)], check=True, capture_output=True)
    assert blockbed_contents(img, SIZE) == raw_contents(qemu_img, img, SIZE)
    for cmd in (["map", "--output=json"], ["info", "--output=json"], ["check"]):
        rc, out, _ = bb(capsys, *cmd, str(img))
        ref = q(qemu_img, *cmd, str(img))
        assert (rc, out) == (ref.returncode, ref.stdout), cmd


def test_random_workload_passes_qemu_check(qemu_img, qemu_io, tmp_path):
    """blockbed's own random workload (reads checked against a model as it goes)."""
    img = tmp_path / "t.qcow2"
    _create(qemu_img, img, SIZE, "cluster_size=32k," + _backing(qemu_img, qemu_io, tmp_path))
    model = raw_contents(qemu_img, img, SIZE)
    node = registry.open_image(str(img), "qcow2")
    try:
        run_workload(node, model, seed=3, nops=150)
    finally:
        node.close()
    chk = q(qemu_img, "check", str(img))
    assert chk.returncode == 0, chk.stdout + chk.stderr
    ref = tmp_path / "ref.raw"
    ref.write_bytes(model)
    assert q(qemu_img, "compare", "-F", "raw", str(img), str(ref)).returncode == 0


def _l2_entry_at(path: Path, index: int) -> int:
    """File offset of extended L2 entry ``index`` of the first L2 table."""
    with open(path, "rb") as f:
        f.seek(40)
        l1 = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1)
        return (struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00) + 16 * index


def _l2_entry(path: Path, index: int) -> tuple[int, int]:
    """(descriptor, bitmap) of extended L2 entry ``index`` of the first L2 table."""
    with open(path, "rb") as f:
        f.seek(_l2_entry_at(path, index))
        return struct.unpack(">QQ", f.read(16))


def test_partial_write_over_backing_allocates_only_touched_subclusters(qemu_img, qemu_io,
                                                                        tmp_path):
    """The point of the feature: 4 KiB at 5 KiB into a 64 KiB cluster over a backing file
    copies 1 KiB on each side (the rest of subclusters 2 and 4), not 60 KiB."""
    img = tmp_path / "t.qcow2"
    _create(qemu_img, img, SIZE, _backing(qemu_img, qemu_io, tmp_path))
    with trace.Recorder(("qcow2.alloc",)) as rec:
        node = registry.open_image(str(img), "qcow2")
        try:
            node.write(5 << 10, b"\xee" * 4096)
        finally:
            node.close()
    allocs = [e.fields for e in rec.events]
    assert len(allocs) == 1 and (allocs[0]["cow_head"], allocs[0]["cow_tail"]) == (1024, 1024)
    entry, bitmap = _l2_entry(img, 0)
    assert entry & 0x00FFFFFFFFFFFE00 and entry >> 63            # allocated, COPIED
    assert bitmap == 0b11100                                      # subclusters 2, 3, 4 only
    expect = bytearray(b"\x11" * (64 << 10))
    expect[5 << 10:9 << 10] = b"\xee" * 4096
    assert raw_contents(qemu_img, img, SIZE)[:64 << 10] == expect
    # a second write into the same cluster fills subcluster 10 in place
    node = registry.open_image(str(img), "qcow2")
    try:
        node.write(20 << 10, b"\xdd" * 2048)
    finally:
        node.close()
    assert _l2_entry(img, 0) == (entry, 0b11100 | 1 << 10)
    assert q(qemu_img, "check", str(img)).returncode == 0


def test_zero_writes_set_subcluster_zero_bits(qemu_img, tmp_path):
    img = tmp_path / "t.qcow2"
    _create(qemu_img, img)
    node = registry.open_image(str(img), "qcow2")
    try:
        node.write(0, b"\x01" * 8192)                # subclusters 0-3 allocated
        node.write_zeroes(2048, 4096)                # 1 and 2 become zero subclusters
        node.write_zeroes((64 << 10) + 6144, 2048)   # zero bit in a cluster with no host
    finally:
        node.close()
    e0, b0 = _l2_entry(img, 0)
    assert b0 == (0b1001 | 0b0110 << 32)
    assert _l2_entry(img, 1) == (0, 1 << (32 + 3))
    assert q(qemu_img, "check", str(img)).returncode == 0


def _bad(qemu_img, qemu_io, d: Path, name: str) -> Path:
    img = d / f"{name}.qcow2"
    src = d / "good.qcow2"
    if not src.exists():
        _create(qemu_img, src, 1 << 20)
        subprocess.run([qemu_io, "-c", "write -P 1 0 4k", "-c", "write -P 2 64k 64k", str(src)],
                       check=True, capture_output=True)
    if name == "compressed":
        subprocess.run([qemu_img, "convert", "-c", "-O", "qcow2", "-o", "extended_l2=on",
                        str(src), str(img)], check=True)
    else:
        shutil.copy(src, img)
    index, bitmap = {"both-bits": (0, 1 << 32 | 0b11), "unallocated": (3, 0x10),
                     "compressed": (1, 0x5)}[name]
    at = _l2_entry_at(img, index) + 8
    with open(img, "r+b") as f:
        f.seek(at)
        f.write(struct.pack(">Q", bitmap))
    return img


@pytest.mark.parametrize("name", ["both-bits", "unallocated", "compressed"])
def test_malformed_bitmaps(qemu_img, qemu_io, tmp_path, capsys, name):
    img = _bad(qemu_img, qemu_io, tmp_path, name)
    rc, out, _ = bb(capsys, "check", str(img))
    ref = q(qemu_img, "check", str(img))
    assert (rc, out) == (ref.returncode, ref.stdout) and rc == 2
    offset = {"both-bits": 0, "unallocated": 3 << 16, "compressed": 64 << 10}[name]
    node = registry.open_image(str(img), "qcow2", read_only=True)
    try:
        buf = bytearray(4096)
        if name == "compressed":
            node.read(offset, memoryview(buf))       # QEMU reads it too; only check objects
            assert buf == b"\x02" * 4096
        else:
            with pytest.raises(CorruptImageError, match="Invalid cluster entry found"):
                node.read(offset, memoryview(buf))
    finally:
        node.close()
    if name != "compressed":
        # opened read/write, the bad entry marks the image corrupt (as QEMU does)
        node = registry.open_image(str(img), "qcow2")
        with pytest.raises(CorruptImageError):
            node.write(offset, b"x" * 512)
        node.close()
        assert '"corrupt": true' in q(qemu_img, "info", "--output=json", str(img)).stdout


def test_create_rules_and_info_match_qemu(qemu_img, tmp_path, capsys):
    for opts, needle in (("extended_l2=on,compat=0.10", "compatibility level 1.1"),
                         ("extended_l2=on,cluster_size=8k", "at least 16384 bytes")):
        rc, _, err = bb(capsys, "create", "-f", "qcow2", "-o", opts, str(tmp_path / "x.qcow2"),
                        "1M")
        ref = q(qemu_img, "create", "-f", "qcow2", "-o", opts, str(tmp_path / "y.qcow2"), "1M")
        assert rc == ref.returncode == 1
        assert needle in err and err.split(": ", 1)[1] == ref.stderr.split(": ", 2)[2]
    ours, theirs = tmp_path / "b.qcow2", tmp_path / "q.qcow2"
    for prealloc in ("off", "metadata", "falloc", "full"):
        opts = f"extended_l2=on,cluster_size=32k,preallocation={prealloc}"
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
        assert bb(capsys, "create", "-q", "-f", "qcow2", "-o", opts, str(ours), "3M")[0] == 0
        _create(qemu_img, theirs, 3 << 20, f"cluster_size=32k,preallocation={prealloc}")
        assert _map(qemu_img, ours) == _map(qemu_img, theirs), prealloc
        info = bb(capsys, "info", "--output=json", str(ours))[1]
        ref = q(qemu_img, "info", "--output=json", str(ours)).stdout
        assert info == ref and '"extended-l2": true' in info
    assert ours.read_bytes() != b""


def test_convert_compressed_into_extended_l2(qemu_img, qemu_io, tmp_path, capsys):
    src = tmp_path / "src.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(src), "3M"], check=True)
    subprocess.run([qemu_io, "-c", "write -P 1 0 100k", "-c", "write -P 2 1M 64k",
                    "-c", "write -z 2M 64k", "-c", "write 2500k 4k", str(src)],
                   check=True, capture_output=True)
    ours, theirs = tmp_path / "b.qcow2", tmp_path / "q.qcow2"
    assert bb(capsys, "convert", "-c", "-O", "qcow2", "-o", "extended_l2=on", str(src),
              str(ours))[0] == 0
    subprocess.run([qemu_img, "convert", "-c", "-O", "qcow2", "-o", "extended_l2=on", str(src),
                    str(theirs)], check=True)
    assert _map(qemu_img, ours) == _map(qemu_img, theirs)
    assert q(qemu_img, "compare", str(ours), str(src)).returncode == 0
    # a partial write and a partial zero write over compressed clusters
    ops = [("write", 4096, 4096, 9), ("zero", 65536, 2048, 0)]
    subprocess.run([qemu_io, *_qemu_io_args(ops), str(theirs)], check=True, capture_output=True)
    _apply(ours, ops)
    assert _map(qemu_img, ours) == _map(qemu_img, theirs)
    assert q(qemu_img, "check", str(ours)).returncode == 0


def test_internal_snapshots(qemu_img, qemu_io, tmp_path, capsys):
    imgs = [tmp_path / "q.qcow2", tmp_path / "b.qcow2"]
    for p in imgs:
        _create(qemu_img, p, 2 << 20)
        subprocess.run([qemu_io, "-c", "write -P 1 0 300k", str(p)], check=True,
                       capture_output=True)
    assert q(qemu_img, "snapshot", "-c", "s1", str(imgs[0])).returncode == 0
    assert bb(capsys, "snapshot", "-c", "s1", str(imgs[1]))[0] == 0
    ops = [("zero", 0, 65536, 0), ("zero", 65536, 65536, 1), ("write", 4096, 2048, 3),
           ("write", 70 << 10, 2048, 4), ("zero", 128 << 10, 70 << 10, 0),
           ("discard", 192 << 10, 64 << 10, 0)]
    subprocess.run([qemu_io, *_qemu_io_args(ops), str(imgs[0])], check=True, capture_output=True)
    _apply(imgs[1], ops)
    assert _map(qemu_img, imgs[1]) == _map(qemu_img, imgs[0])
    assert q(qemu_img, "check", str(imgs[1])).stdout == q(qemu_img, "check", str(imgs[0])).stdout
    assert bb(capsys, "snapshot", "-a", "s1", str(imgs[1]))[0] == 0
    expect = bytearray(2 << 20)
    expect[:300 << 10] = b"\x01" * (300 << 10)
    assert raw_contents(qemu_img, imgs[1], 2 << 20) == expect


def test_subcluster_size_must_be_a_sector(tmp_path):
    """QEMU refuses extended L2 entries with clusters below 16 KiB when opening, too."""
    from blockbed.block.qcow2.imagecreate import create
    img = tmp_path / "t.qcow2"
    create(str(img), 1 << 20, {"extended_l2": "on", "cluster_size": "16k"})
    with open(img, "r+b") as f:
        f.seek(20)
        f.write(struct.pack(">I", 13))
    with pytest.raises(BlockError, match="Unsupported subcluster size: 256"):
        registry.open_image(str(img), "qcow2")


@pytest.mark.parametrize("lazy", ["off", "on"])
def test_crash_sweep_is_clean(lazy):
    """Host crash at any point of a subcluster-heavy workload: every state opens, checks
    clean (leaks allowed) and keeps every durable write — bitmap updates follow the data
    they expose."""
    from blockbed.block.crash.checker import Checker
    from blockbed.block.crash.session import Recording
    from blockbed.block.crash.states import enumerate_states
    from blockbed.block.crash.workload import WorkloadConfig, run_workload as crash_workload
    rec = Recording.in_memory("qcow2", 16 << 20, "writeback",
                              create_options={"cluster_size": 65536, "extended_l2": "on",
                                              "lazy_refcounts": lazy})
    crash_workload(rec.backend, WorkloadConfig(ops=120, seed=5, region_sectors=4096,
                                               lba_stride=8, max_sectors=16, p_discard=0.06,
                                               p_zeroes=0.1))
    chk = Checker(rec.base, rec.log, rec.oracle(), "qcow2", 1)
    res = chk.run(enumerate_states(rec.log, 150, 1))
    assert res.states_checked >= 100
    assert res.violations == [], res.violations[:3]


@pytest.mark.parametrize("extl2", [True, False], ids=["extl2", "standard-l2"])
@pytest.mark.parametrize("raw", ["off", "on"])
def test_external_data_file(qemu_img, qemu_io, tmp_path, monkeypatch, raw, extl2):
    """With a data file the host offset is the guest offset; discards and zero writes
    still go through the bitmap (and reach a raw data file, which must stay in sync).
    The standard-L2 rows hold the base driver to the same: a discard makes the clusters
    read as zeros and reaches the data file, as QEMU 7.2 does."""
    monkeypatch.chdir(tmp_path)      # QEMU resolves data-file names against the cwd
    for n in ("q", "b"):
        _create(qemu_img, Path(f"{n}.qcow2"), 2 << 20, f"data_file={n}.raw,data_file_raw={raw}",
                extl2=extl2)
    ops = [("write", 4096, 4096, 1), ("zero", 65536, 2048, 0), ("write", 100 << 10, 70 << 10, 2),
           ("discard", 128 << 10, 64 << 10, 0), ("zero", 160 << 10, 4096, 1),
           ("zero", 300 << 10, 64 << 10, 0)]
    subprocess.run([qemu_io, *_qemu_io_args(ops), "q.qcow2"], check=True, capture_output=True)
    _apply(Path("b.qcow2"), ops)
    norm = [_map(qemu_img, Path(f"{n}.qcow2")).replace(f"{n}.raw", "X") for n in ("q", "b")]
    assert norm[0] == norm[1]
    assert q(qemu_img, "compare", "q.qcow2", "b.qcow2").returncode == 0
    assert q(qemu_img, "check", "b.qcow2").returncode == 0
    if raw == "on":
        assert Path("q.raw").read_bytes() == Path("b.raw").read_bytes()


def test_persistent_dirty_bitmaps_track_subcluster_writes(qemu_img, qemu_io, tmp_path):
    """The extended-L2 driver's own write paths still mark enabled persistent bitmaps
    (same dirty granules as a qemu-io session doing the same)."""
    imgs = [tmp_path / "q.qcow2", tmp_path / "b.qcow2"]
    ops = [("write", 4096, 1024, 1), ("zero", 3 << 20, 6144, 0), ("discard", 1 << 20, 1 << 16, 0),
           ("write", (2 << 20) - 512, 70 << 10, 2)]
    for p in imgs:
        _create(qemu_img, p)
        assert q(qemu_img, "bitmap", "--add", "-g", "65536", str(p), "b0").returncode == 0
    subprocess.run([qemu_io, *_qemu_io_args(ops), str(imgs[0])], check=True, capture_output=True)
    _apply(imgs[1], ops)
    dirty = []
    for p in imgs:
        node = registry.open_image(str(p), "qcow2", read_only=True)
        try:
            dirty.append(list(node.bitmaps.bits(node.bitmaps.lookup("b0")).extents()))
        finally:
            node.close()
    assert dirty[0] == dirty[1] and len(dirty[1]) >= 3
