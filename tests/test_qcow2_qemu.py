"""Differential tests against the real qemu-img/qemu-io (QEMU 7.2).

Images blockbed creates and writes with random workloads must pass
``qemu-img check`` without errors or leaks and compare equal to a raw
reference; images qemu-img creates and qemu-io writes must read identically
in blockbed.  ``make test`` runs a pairwise sample of the option matrix; the
full matrix is marked slow.
"""

from __future__ import annotations

import itertools
import random
import subprocess
from pathlib import Path

import pytest

from blockbed.block import registry
from qcow2_helpers import blockbed_contents, raw_contents, run_workload
from blockbed.block.qcow2.imagecreate import create

SIZE = 6 << 20
COMPAT = ("0.10", "1.1")
CLUSTERS = (512, 4096, 65536, 2 << 20)
REFBITS = (1, 16, 64)
BACKING = (False, True)
PREALLOC = ("off", "metadata", "falloc", "full")


def _valid(compat, cluster, refbits, backing, prealloc) -> bool:
    if compat == "0.10" and refbits != 16:
        return False
    if backing and prealloc != "off":
        return False           # QEMU: needs extended_l2
    return True


FULL = [c for c in itertools.product(COMPAT, CLUSTERS, REFBITS, BACKING, PREALLOC) if _valid(*c)]

# pairwise-ish sample: every value of every dimension appears, small clusters stressed
SAMPLE = [
    ("1.1", 512, 1, False, "off"),
    ("1.1", 512, 64, True, "off"),
    ("0.10", 4096, 16, True, "off"),
    ("1.1", 4096, 64, False, "metadata"),
    ("1.1", 65536, 16, False, "falloc"),
    ("0.10", 65536, 16, False, "full"),
    ("1.1", 2 << 20, 1, True, "off"),
    ("0.10", 512, 16, False, "metadata"),
    # extended L2 entries (an optional sixth field): backing + preallocation is allowed there
    ("1.1", 65536, 16, True, "metadata", True),
    ("1.1", 16384, 64, False, "off", True),
]


def _make_chain(qemu_img: str, qemu_io: str, d: Path, cluster: int) -> Path:
    """A 2-deep backing chain written by qemu-io: base (raw-ish qcow2) <- mid."""
    base, mid = d / "base.qcow2", d / "mid.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(base), str(SIZE - (1 << 20))],
                   check=True)
    subprocess.run([qemu_io, "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 3M 1536k", str(base)],
                   check=True, capture_output=True)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}",
                    "-b", "base.qcow2", "-F", "qcow2", str(mid), str(SIZE)], check=True)
    subprocess.run([qemu_io, "-c", "write -P 0x33 1M 300k", "-c", "write -z 3M 64k",
                    "-c", "write -P 0x44 5M 100k", str(mid)], check=True, capture_output=True)
    return mid


def _blockbed_writes(qemu_img, qemu_io, tmp_path, compat, cluster, refbits, backing, prealloc,
                     extl2=False, seed=1, nops=120):
    img = tmp_path / "t.qcow2"
    opts = {"compat": compat, "cluster_size": str(cluster), "refcount_bits": str(refbits),
            "preallocation": prealloc, "extended_l2": "on" if extl2 else "off"}
    model = bytearray(SIZE)
    if backing:
        mid = _make_chain(qemu_img, qemu_io, tmp_path, cluster)
        model = raw_contents(qemu_img, mid, SIZE)
        opts.update(backing_file="mid.qcow2", backing_fmt="qcow2")
    create(str(img), SIZE, opts)
    node = registry.open_image(str(img), "qcow2")
    try:
        run_workload(node, model, seed, nops, v2_backing=(backing and compat == "0.10"))
    finally:
        node.close()
    chk = subprocess.run([qemu_img, "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    assert "No errors were found" in chk.stdout
    ref = tmp_path / "ref.raw"
    ref.write_bytes(model)
    cmp = subprocess.run([qemu_img, "compare", "-f", "qcow2", "-F", "raw", str(img), str(ref)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def _qemu_writes(qemu_img, qemu_io, tmp_path, compat, cluster, refbits, backing, prealloc,
                 extl2=False, seed=2):
    img = tmp_path / "q.qcow2"
    args = [qemu_img, "create", "-q", "-f", "qcow2", "-o",
            f"compat={compat},cluster_size={cluster},refcount_bits={refbits},preallocation={prealloc},"
            f"extended_l2={'on' if extl2 else 'off'}"]
    if backing:
        _make_chain(qemu_img, qemu_io, tmp_path, cluster)
        args += ["-b", "mid.qcow2", "-F", "qcow2"]
    subprocess.run(args + [str(img), str(SIZE)], check=True)
    rnd = random.Random(seed)
    cmds = []
    for _ in range(40):
        off = rnd.randrange(0, SIZE // 512) * 512
        ln = min(SIZE - off, rnd.choice([512, 4096, 65536, 300 * 1024]))
        kind = rnd.random()
        if kind < 0.6:
            cmds += ["-c", f"write -P {rnd.randrange(1, 256)} {off} {ln}"]
        elif kind < 0.8:
            cmds += ["-c", f"write -z {off} {ln}"]
        else:
            cmds += ["-c", f"discard {off} {ln}"]
    subprocess.run([qemu_io, *cmds, str(img)], check=True, capture_output=True)
    assert blockbed_contents(img, SIZE) == raw_contents(qemu_img, img, SIZE)


@pytest.mark.parametrize("case", SAMPLE, ids=lambda c: "-".join(map(str, c)))
def test_blockbed_writes_pass_qemu_check(qemu_img, qemu_io, tmp_path, case):
    _blockbed_writes(qemu_img, qemu_io, tmp_path, *case)


@pytest.mark.parametrize("case", SAMPLE, ids=lambda c: "-".join(map(str, c)))
def test_qemu_written_images_read_identically(qemu_img, qemu_io, tmp_path, case):
    _qemu_writes(qemu_img, qemu_io, tmp_path, *case)


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL, ids=lambda c: "-".join(map(str, c)))
def test_full_matrix_blockbed_writes(qemu_img, qemu_io, tmp_path, case):
    _blockbed_writes(qemu_img, qemu_io, tmp_path, *case, seed=7, nops=200)


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL, ids=lambda c: "-".join(map(str, c)))
def test_full_matrix_qemu_writes(qemu_img, qemu_io, tmp_path, case):
    _qemu_writes(qemu_img, qemu_io, tmp_path, *case, seed=8)


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_compressed_clusters_read(qemu_img, tmp_path, ctype):
    src = tmp_path / "src.raw"
    rnd = random.Random(3)
    data = bytearray()
    for i in range(48):
        data += (bytes([i]) * 1000 + rnd.randbytes(24)) * 64 if i % 3 else rnd.randbytes(65536)
    src.write_bytes(data)
    img = tmp_path / "c.qcow2"
    subprocess.run([qemu_img, "convert", "-c", "-O", "qcow2", "-o", f"compression_type={ctype}",
                    str(src), str(img)], check=True)
    node = registry.open_image(str(img), "qcow2")
    try:
        got = bytearray(len(data))
        node.read(0, memoryview(got))
        assert got == data
        # overwriting part of a compressed cluster copies it on write
        node.write(70000, b"\xab" * 5000)
        data[70000:75000] = b"\xab" * 5000
        node.read(0, memoryview(got))
        assert got == data
    finally:
        node.close()
    chk = subprocess.run([qemu_img, "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr


def test_refcount_table_and_l1_growth(qemu_img, tmp_path):
    """512-byte clusters with 64-bit refcounts: the refcount table (1 cluster = 64 blocks
    of 64 clusters) and the L1 table must both grow while writing 16 MiB."""
    img = tmp_path / "g.qcow2"
    create(str(img), 1 << 20, {"cluster_size": "512", "refcount_bits": "64"})
    node = registry.open_image(str(img), "qcow2")
    try:
        old_reftable = node.header.refcount_table_offset
        node.truncate(16 << 20)
        old_l1 = node.header.l1_table_offset
        model = bytearray(16 << 20)
        run_workload(node, model, seed=11, nops=60)
        node.write(0, b"\x5a" * (16 << 20))
        model[:] = b"\x5a" * (16 << 20)
        assert node.header.refcount_table_offset != old_reftable
        assert node.header.l1_size * 512 * 64 >= 16 << 20
        assert old_l1 != 0
    finally:
        node.close()
    chk = subprocess.run([qemu_img, "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    ref = tmp_path / "ref.raw"
    ref.write_bytes(model)
    cmp = subprocess.run([qemu_img, "compare", str(img), str(ref)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout


def test_writes_on_image_with_internal_snapshot(qemu_img, qemu_io, tmp_path):
    """Clusters shared with a snapshot (no OFLAG_COPIED) are copied on write, L2 tables
    too; the snapshot still holds the old data afterwards."""
    img = tmp_path / "s.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(img),
                    "8M"], check=True)
    subprocess.run([qemu_io, "-c", "write -P 1 0 8M", str(img)], check=True, capture_output=True)
    subprocess.run([qemu_img, "snapshot", "-c", "s1", str(img)], check=True)
    node = registry.open_image(str(img), "qcow2")
    model = bytearray(b"\x01" * (8 << 20))
    try:
        run_workload(node, model, seed=21, nops=80)
    finally:
        node.close()
    chk = subprocess.run([qemu_img, "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    ref = tmp_path / "ref.raw"
    ref.write_bytes(model)
    assert subprocess.run([qemu_img, "compare", str(img), str(ref)]).returncode == 0
    subprocess.run([qemu_img, "snapshot", "-a", "s1", str(img)], check=True)
    ref.write_bytes(b"\x01" * (8 << 20))
    assert subprocess.run([qemu_img, "compare", str(img), str(ref)]).returncode == 0
    assert subprocess.run([qemu_img, "check", str(img)], capture_output=True).returncode == 0


@pytest.mark.parametrize("ctype,cluster", [("zlib", 65536), ("zstd", 512), ("zlib", 4096)])
def test_compressed_writes_pass_qemu_check(qemu_img, tmp_path, ctype, cluster):
    """blockbed img convert -c packs compressed clusters; later overwrites and discards
    of compressed clusters keep the refcounts right."""
    from blockbed.cli import main
    rnd = random.Random(5)
    data = bytearray()
    while len(data) < (3 << 20):
        data += (b"block %d " % len(data)) * rnd.randrange(1, 400) + rnd.randbytes(rnd.randrange(0, 3000))
    del data[3 << 20:]
    src, img = tmp_path / "s.raw", tmp_path / "c.qcow2"
    src.write_bytes(data)
    assert main(["img", "convert", "-c", "-O", "qcow2", "-o",
                 f"compression_type={ctype},cluster_size={cluster}", str(src), str(img)]) == 0
    chk = subprocess.run([qemu_img, "check", "--output=json", str(img)], capture_output=True,
                         text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    assert '"compressed-clusters"' in chk.stdout
    assert subprocess.run([qemu_img, "compare", str(src), str(img)]).returncode == 0
    node = registry.open_image(str(img), "qcow2")
    try:
        run_workload(node, data, seed=9, nops=60)
    finally:
        node.close()
    chk = subprocess.run([qemu_img, "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    src.write_bytes(data)
    assert subprocess.run([qemu_img, "compare", str(src), str(img)]).returncode == 0


@pytest.mark.parametrize("cluster,size", [(512, (32 << 20) // 8 * 64 * 512),       # L1 limit
                                          (65536, 1 << 50), (2 << 20, (1 << 56) - (2 << 20))])
def test_huge_sparse_virtual_sizes(qemu_img, tmp_path, cluster, size):
    """Virtual sizes up to QEMU's limits: write the last and first sectors, read back."""
    img = tmp_path / "h.qcow2"
    size = size // 512 * 512
    try:
        create(str(img), size, {"cluster_size": str(cluster)})
    except OSError as e:
        pytest.fail(f"create failed: {e}")
    node = registry.open_image(str(img), "qcow2")
    try:
        node.write(size - 512, b"\xfe" * 512)
        node.write(0, b"\x01" * 512)
        buf = bytearray(512)
        node.read(size - 512, memoryview(buf))
        assert buf == b"\xfe" * 512
    finally:
        node.close()
    assert img.stat().st_blocks * 512 < (64 << 20)            # sparse
    chk = subprocess.run([qemu_img, "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    info = subprocess.run([qemu_img, "info", "--output=json", str(img)], capture_output=True,
                          text=True).stdout
    assert f'"virtual-size": {size}' in info


def test_size_beyond_limits_is_refused(tmp_path):
    with pytest.raises(OSError, match="too large|L1"):
        create(str(tmp_path / "x.qcow2"), 1 << 60, {"cluster_size": "512"})


@pytest.mark.parametrize("size,limit", [(1 << 30, 5.0),
                                        pytest.param(4 << 30, 5.0, marks=pytest.mark.slow)])
def test_metadata_preallocation_is_bulk(qemu_img, tmp_path, size, limit):
    """preallocation=metadata with 512-byte clusters is computed and written in bulk
    (qemu-img needs minutes for 4 GiB)."""
    import time
    img = tmp_path / "p.qcow2"
    t = time.monotonic()
    create(str(img), size, {"cluster_size": "512", "preallocation": "metadata"})
    assert time.monotonic() - t < limit
    chk = subprocess.run([qemu_img, "check", "--output=json", str(img)], capture_output=True,
                         text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    assert f'"allocated-clusters": {size // 512}' in chk.stdout
    node = registry.open_image(str(img), "qcow2")
    try:
        node.write(size // 2, b"\x42" * 4096)                    # in place: no allocation
        assert node.header.refcount_table_offset == 512
    finally:
        node.close()


@pytest.mark.parametrize("raw", ["on", "off"])
def test_external_data_file(qemu_img, qemu_io, tmp_path, capsys, monkeypatch, raw):
    """Images whose data clusters live in an external data file (identity-mapped,
    unrefcounted): created byte-identically, read and written like QEMU.  QEMU takes
    the data file name relative to the current directory; so do we."""
    from blockbed.cli import main
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    opts = f"data_file=d.data,data_file_raw={raw}"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, str(a / "i.qcow2"), "4M"],
                   check=True)
    monkeypatch.chdir(b)
    assert main(["img", "create", "-q", "-f", "qcow2", "-o", opts, str(b / "i.qcow2"), "4M"]) == 0
    assert (a / "i.qcow2").read_bytes() == (b / "i.qcow2").read_bytes()
    assert (b / "d.data").stat().st_size == 4 << 20
    monkeypatch.chdir(a)
    # qemu writes, blockbed reads
    subprocess.run([qemu_io, "-c", "write -P 1 0 100k", "-c", "write -z 1M 64k",
                    "-c", "write -P 2 3M 70k", str(a / "i.qcow2")], check=True, capture_output=True)
    expect = raw_contents(qemu_img, a / "i.qcow2", 4 << 20)
    node = registry.open_image(str(a / "i.qcow2"), "qcow2")
    try:
        got = bytearray(4 << 20)
        node.read(0, memoryview(got))
        assert got == expect
    finally:
        node.close()
    for cmd in (["info", "--output=json"], ["map", "--output=json"], ["check", "--output=json"]):
        capsys.readouterr()
        rc = main(["img", *cmd, str(a / "i.qcow2")])
        ours = capsys.readouterr().out
        theirs = subprocess.run([qemu_img, *cmd, str(a / "i.qcow2")], capture_output=True,
                                text=True)
        assert (rc, ours) == (theirs.returncode, theirs.stdout), cmd
    # blockbed writes, qemu checks and compares
    monkeypatch.chdir(b)
    node = registry.open_image(str(b / "i.qcow2"), "qcow2")
    model = bytearray(4 << 20)
    try:
        run_workload(node, model, seed=4, nops=80)
    finally:
        node.close()
    chk = subprocess.run([qemu_img, "check", str(b / "i.qcow2")], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    (b / "ref.raw").write_bytes(model)
    assert subprocess.run([qemu_img, "compare", str(b / "i.qcow2"), str(b / "ref.raw")]).returncode == 0


def test_internal_snapshot_lifecycle(qemu_img, qemu_io, tmp_path, capsys):
    """blockbed img snapshot -c/-l/-a/-d against qemu: qemu applies our snapshots, we
    apply theirs, every step checks clean, and the data of each snapshot comes back."""
    from blockbed.cli import main
    img = str(tmp_path / "s.qcow2")
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "8M"],
                   check=True)
    io = lambda *c: subprocess.run([qemu_io, *sum((["-c", x] for x in c), []), img], check=True,
                                   capture_output=True, text=True).stdout

    def clean():
        chk = subprocess.run([qemu_img, "check", img], capture_output=True, text=True)
        assert chk.returncode == 0, chk.stdout + chk.stderr

    io("write -P 1 0 8M")
    assert main(["img", "snapshot", "-c", "one", img]) == 0          # ours
    clean()
    io("write -P 2 1M 2M")
    subprocess.run([qemu_img, "snapshot", "-c", "two", img], check=True)   # theirs
    node = registry.open_image(img, "qcow2")
    node.write(0, b"\3" * 70000)
    node.close()
    clean()
    capsys.readouterr()
    assert main(["img", "snapshot", "-l", img]) == 0
    ours = capsys.readouterr().out
    theirs = subprocess.run([qemu_img, "snapshot", "-l", img], capture_output=True, text=True).stdout
    assert ours == theirs
    subprocess.run([qemu_img, "snapshot", "-a", "one", img], check=True)   # theirs applies ours
    assert "Pattern verification failed" not in io("read -P 1 0 8M")
    assert main(["img", "snapshot", "-a", "two", img]) == 0          # we apply theirs
    clean()
    out = io("read -P 1 0 1M", "read -P 2 1M 2M", "read -P 1 3M 5M")
    assert "Pattern verification failed" not in out
    assert main(["img", "snapshot", "-d", "one", img]) == 0
    clean()
    assert main(["img", "snapshot", "-d", "two", img]) == 0
    clean()
    assert subprocess.run([qemu_img, "snapshot", "-l", img], capture_output=True,
                          text=True).stdout == ""
    assert main(["img", "snapshot", "-a", "nope", img]) == 1


# --- zero writes split as QEMU's block layer splits them ------------------------------------
ZERO_OPS = [
    ("write", 1000 << 10, 8 << 10, 1),        # data in cluster 15
    ("zero", 300 << 10, 64 << 10, 0),         # unaligned over unallocated: two zero clusters
    ("zero", 1001 << 10, 2 << 10, 0),         # inside data: written as zeros
    ("zero", 1030 << 10, 40 << 10, 0),        # head in data (bytes), tail unallocated (flag)
    ("write", 1500 << 10, 100 << 10, 2),
    ("zero", 1490 << 10, 200 << 10, 1),       # -u over data: middle unmapped, edges bytes
    ("zero", (2 << 20) - 1512, 1000, 0),      # into the image's last, partial cluster
    ("zero", 64 << 10, 128 << 10, 1),         # aligned over unallocated
]


@pytest.mark.parametrize("backing", [False, True], ids=["plain", "backing"])
def test_zero_writes_map_like_qemu(qemu_img, qemu_io, tmp_path, backing):
    """The same zero writes through qemu-io and blockbed give the same `qemu-img map`
    (QEMU: a partial cluster becomes a zero cluster only when it is unallocated or zero
    and the rest of it reads as zeros; otherwise zeros are written as data)."""
    size = (2 << 20) - 512
    imgs = [tmp_path / "q.qcow2", tmp_path / "b.qcow2"]
    extra = []
    if backing:
        base = tmp_path / "base.qcow2"
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(base), str(size)], check=True)
        subprocess.run([qemu_io, "-c", "write -P 9 256k 64k", "-c", "write -P 8 1024k 16k",
                        str(base)], check=True, capture_output=True)
        extra = ["-b", str(base), "-F", "qcow2"]
    for p in imgs:
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", *extra, str(p), str(size)],
                       check=True)
    args = []
    for kind, off, ln, arg in ZERO_OPS:
        args += ["-c", f"write -P {arg} {off} {ln}" if kind == "write" else
                 f"write -z {'-u ' if arg else ''}{off} {ln}"]
    subprocess.run([qemu_io, *args, str(imgs[0])], check=True, capture_output=True)
    node = registry.open_image(str(imgs[1]), "qcow2")
    try:
        for kind, off, ln, arg in ZERO_OPS:
            if kind == "write":
                node.write(off, bytes([arg]) * ln)
            else:
                node.write_zeroes(off, ln, may_unmap=bool(arg))
    finally:
        node.close()
    maps = [subprocess.run([qemu_img, "map", "--output=json", str(p)], check=True,
                           capture_output=True, text=True).stdout for p in imgs]
    assert maps[0] == maps[1]
    assert subprocess.run([qemu_img, "compare", *map(str, imgs)]).returncode == 0
    assert subprocess.run([qemu_img, "check", str(imgs[1])], capture_output=True).returncode == 0
