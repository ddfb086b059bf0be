"""Random metadata damage (hypothesis): one field of the corpus base image is set to a
random, bit-flipped or "plausible" value (another metadata offset, ±512), then the
corpus invariants are checked (see tests/qcow2_corpus.py):

* no crash, no runaway memory or time (each example runs in a process limited to
  1 GiB of address space and 60 s),
* read-only commands leave the file unchanged,
* a whole-image read that succeeds returns the base image's data or exactly what
  qemu-img reads (the damage may leave a valid image with other content),
* flushed writes read back and never make ``qemu-img check`` report more corruption.

``make test`` runs a fixed (derandomized) set of examples; ``make fuzz`` runs many more
(``BLOCKBED_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import need_tool
from qcow2_corpus import COPIED, Layout, build_base, locate, poke

WORKER = Path(__file__).with_name("qcow2_fuzz_worker.py")
EXAMPLES = int(os.environ.get("BLOCKBED_FUZZ_EXAMPLES", "25"))
MEMORY_LIMIT = 1 << 30


def _fields(lay: Layout) -> list[tuple[str, int, int]]:
    """(name, file offset, width) of every metadata field worth damaging."""
    f = [("hdr.backing_offset", 8, 8), ("hdr.backing_size", 16, 4),
         ("hdr.cluster_bits", 20, 4), ("hdr.size", 24, 8), ("hdr.crypt", 32, 4),
         ("hdr.l1_size", 36, 4), ("hdr.l1_offset", 40, 8), ("hdr.reftable", 48, 8),
         ("hdr.reftable_clusters", 56, 4), ("hdr.nb_snapshots", 60, 4),
         ("hdr.snapshots", 64, 8), ("hdr.incompat", 72, 8), ("hdr.compat", 80, 8),
         ("hdr.autoclear", 88, 8), ("hdr.refcount_order", 96, 4),
         ("hdr.header_length", 100, 4)]
    f += [("l1[0]", lay.l1, 8), ("reftable[0]", lay.reftable, 8)]
    f += [(f"l2[{i}]", lay.l2 + 8 * i, 8) for i in (0, 1, 2, lay.compressed_entry_index, 32, 48)]
    f += [(f"refblock[{i}]", lay.refblock0 + 2 * i, 2) for i in range(18)]
    f += [(f"snap.{n}", lay.snapshots + o, w) for n, o, w in
          (("l1_offset", 0, 8), ("l1_size", 8, 4), ("id_size", 12, 2), ("name_size", 14, 2),
           ("extra_size", 36, 4))]
    f += [("snap_l1[0]", lay.snap_l1, 8), ("snap_l2[0]", lay.snap_l2, 8)]
    f += [(f"bitmap_ext.{n}", lay.bitmap_ext + o, w) for n, o, w in
          (("count", 0, 4), ("dir_size", 8, 8), ("dir_offset", 16, 8))]
    f += [(f"bitmap_dir.{n}", lay.bitmap_dir + o, w) for n, o, w in
          (("table_offset", 0, 8), ("table_size", 8, 4), ("flags", 12, 4), ("type", 16, 1),
           ("granularity", 17, 1), ("name_size", 18, 2), ("extra", 20, 4))]
    if lay.bitmap_table:
        f.append(("bitmap_table[0]", lay.bitmap_table, 8))
    return f


def _data_clusters(base: Path, lay: Layout) -> set[int]:
    """Host cluster indices holding guest data (active and snapshot L2 entries)."""
    b = base.read_bytes()
    out = set()
    for l2 in (lay.l2, lay.snap_l2):
        for i in range(64):
            e = int.from_bytes(b[l2 + 8 * i:l2 + 8 * i + 8], "big")
            if e & (1 << 62):
                out.add((e & ((1 << 54) - 1)) >> 16)
            elif e & 0x00FFFFFFFFFFFE00:
                out.add((e & 0x00FFFFFFFFFFFE00) >> 16)
    return out


def _plausible(lay: Layout) -> list[int]:
    offs = [lay.l1, lay.reftable, lay.refblock0, lay.l2, lay.snapshots, lay.snap_l1,
            lay.snap_l2, lay.bitmap_dir, lay.bitmap_table, lay.data0, lay.flen]
    out = []
    for o in offs:
        out += [o, o + 512, o | COPIED, (o + 512) | COPIED, max(0, o - 65536)]
    return out


@pytest.fixture(scope="module")
def corpus_base(tmp_path_factory):
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "base.qcow2"
    content = build_base(qemu_img, qemu_io, path)
    return path, hashlib.sha256(content).hexdigest(), locate(path), qemu_img, d


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _worker(mode: str, img: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run([sys.executable, str(WORKER), mode, str(img)], capture_output=True,
                           text=True, timeout=60, preexec_fn=_limit, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{mode}: no result within 60 s (a loop or a huge walk)")
    assert p.returncode == 0, f"{mode}: worker crashed (status {p.returncode}):\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.splitlines()[-1])


def _qemu(qemu_img: str, img: Path, out: Path) -> tuple[str | None, int | None]:
    """(digest of qemu-img's reading or None, corruption count or None)."""
    q = subprocess.run([qemu_img, "convert", "-O", "raw", str(img), str(out)],
                       capture_output=True)
    digest = hashlib.sha256(out.read_bytes()).hexdigest() if q.returncode == 0 else None
    c = subprocess.run([qemu_img, "check", "--output=json", str(img)],
                       capture_output=True, text=True)
    try:
        corrupt = json.loads(c.stdout).get("corruptions", 0)
    except ValueError:
        corrupt = None
    return digest, corrupt


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 25,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_metadata_damage(corpus_base, data):
    base, digest, lay, qemu_img, d = corpus_base
    name, off, width = data.draw(st.sampled_from(_fields(lay)), label="field")
    old = int.from_bytes(base.read_bytes()[off:off + width], "big")
    value = data.draw(st.one_of(
        st.integers(0, (1 << (8 * width)) - 1),
        st.integers(0, 8 * width - 1).map(lambda b: old ^ (1 << b)),
        st.sampled_from(_plausible(lay))), label="value")
    img = d / "x.qcow2"
    shutil.copy(base, img)
    poke(img, off, value, width)
    before = _sha(img)
    qdigest, qcorrupt = _qemu(qemu_img, img, d / "q.raw")
    assert _sha(img) == before
    ro = _worker("ro", img)
    assert _sha(img) == before, f"{name}={value:#x}: a read-only command changed the image"
    if ro["read"] is not None:
        assert ro["read"] in (digest, qdigest), (
            f"{name}={value:#x}: the read succeeded with data neither the image's nor "
            "qemu-img's")
    rw = _worker("rw", img)
    if name.startswith("refblock[") and value < old and \
            int(name[9:-1]) in _data_clusters(base, lay):
        # A data cluster whose refcount was lowered looks free: the allocator reuses
        # it and the guest data there is overwritten.  QEMU trusts refcounts on the
        # allocation path too; only `img check` finds this (docs/qcow2.md).
        return
    assert rw["readback_ok"], f"{name}={value:#x}: a flushed write did not read back"
    _, qafter = _qemu(qemu_img, img, d / "q.raw")
    if name == "hdr.l1_size" and value > lay.l1_size:
        return      # garbage L1 entries past the disk: see qcow2_corpus.Damage.garbage
    if qcorrupt is not None:
        assert qafter is not None, f"{name}={value:#x}: qemu-img can no longer open the image"
        assert qafter <= qcorrupt, (
            f"{name}={value:#x}: qemu-img check: {qcorrupt} corruptions before, {qafter} after")
