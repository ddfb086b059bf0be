"""``blockbed img measure`` against ``qemu-img measure`` 7.2: the same numbers, lines,
JSON, messages and exit status, for empty sizes, real sources (qcow2 with data,
holes, bitmaps, backing files; raw with holes) and every qcow2 option that changes
the arithmetic (cluster size, refcount width, extended L2, LUKS, preallocation)."""

from __future__ import annotations

import random
import subprocess

import pytest

from blockbed.cli import main as blockbed_main
from conftest import run_qemu_pbkdf


def _norm(text: str) -> str:
    return text.replace("blockbed img:", "qemu-img:")


def both(capsys, qemu_img: str, cwd, *argv: str) -> None:
    """Run qemu-img measure and blockbed img measure with argv; assert equal results."""
    p = run_qemu_pbkdf(qemu_img, "measure", *argv, cwd=cwd)
    capsys.readouterr()
    rc = blockbed_main(["img", "measure", *argv])
    out = capsys.readouterr()
    assert (rc, out.out, _norm(out.err)) == (p.returncode, p.stdout, p.stderr), argv


@pytest.fixture
def sources(qemu_img, qemu_io, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run(qemu_img, "create", "-f", "qcow2", "a.qcow2", "1G")
    run(qemu_io, "-c", "write -P 1 0 3M", "-c", "write -P 2 500M 64k",
        "-c", "write -P 3 700M 1k", "-c", "write -z 800M 1M", "a.qcow2")
    run(qemu_img, "create", "-f", "qcow2", "bm.qcow2", "300M")
    run(qemu_io, "-c", "write -P 4 1M 64k", "bm.qcow2")
    run(qemu_img, "bitmap", "--add", "bm.qcow2", "b0")
    run(qemu_img, "bitmap", "--add", "-g", "4k", "bm.qcow2", "a-much-longer-bitmap-name")
    run(qemu_img, "create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "ov.qcow2")
    run(qemu_io, "-c", "write -P 5 900M 128k", "ov.qcow2")
    run(qemu_img, "create", "-f", "raw", "r.raw", "100M")
    run(qemu_io, "-f", "raw", "-c", "write 1M 100k", "-c", "write 50M 4k", "r.raw")
    return tmp_path


CASES = [
    "--size 1G", "--size 0 -O qcow2", "--size 10G -O qcow2", "--size 1G -O qcow2 --output=json",
    "-O qcow2 a.qcow2", "-O qcow2 a.qcow2 --output=json", "a.qcow2", "-O raw r.raw",
    "-O qcow2 r.raw", "-f raw -O qcow2 a.qcow2", "-O qcow2 -o compat=0.10 a.qcow2",
    "-O qcow2 -o cluster_size=4k,refcount_bits=1 a.qcow2",
    "-O qcow2 -o preallocation=full a.qcow2", "-O qcow2 -o preallocation=metadata a.qcow2",
    "-O qcow2 -o extended_l2=on a.qcow2", "-O qcow2 -o extended_l2=on,cluster_size=2M a.qcow2",
    "-O qcow2 bm.qcow2", "-O qcow2 bm.qcow2 --output=json", "-O qcow2 -o compat=0.10 bm.qcow2",
    "-O qcow2 ov.qcow2", "-O qcow2 -o backing_file=a.qcow2 ov.qcow2",
    "-O qcow2 -o refcount_bits=64,cluster_size=512 --size 10G",
    "-O qcow2 -o cluster_size=2M --size 100T",
    "-O qcow2 -o encrypt.format=luks,encrypt.key-secret=s --object secret,id=s,data=x --size 1G",
    "-O qcow2 -o encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=aes-128 "
    "--object secret,id=s,data=x a.qcow2",
    "--image-opts -O qcow2 driver=qcow2,file.filename=a.qcow2",
    # errors
    "", "a.qcow2 r.raw", "--size 1G a.qcow2", "-O qcow2 nonexist", "--size abc",
    "--size -5 -O qcow2", "--output=yaml --size 1G", "-O vmdk --size 1G",
    "-O qcow2 -o foo=1 --size 1G", "-O qcow2 -o cluster_size=512 --size 100T",
    "-O qcow2 -o cluster_size=3k --size 1G", "-O qcow2 -o encrypt.format=luks --size 1G",
    "-O raw -o foo=1 --size 1G", "-O qcow2 -l nosuch a.qcow2",
]


@pytest.mark.parametrize("args", CASES, ids=lambda a: a or "(none)")
def test_measure_matches_qemu_img(capsys, qemu_img, sources, args):
    both(capsys, qemu_img, sources, *args.split())


def test_measure_sweep_of_sizes_and_geometries(capsys, qemu_img, tmp_path):
    """The refcount fixed point and the L1/L2 rounding at many sizes: 40 random cases."""
    rng = random.Random(7)
    for _ in range(40):
        cs = 1 << rng.randint(9, 21)
        rb = 1 << rng.randint(0, 6)
        ext = rng.random() < 0.3 and cs >= 16384
        size = rng.choice([rng.randint(0, 1 << 36), rng.randint(0, 1 << 24) * cs,
                           rng.randint(0, 1 << 12)])
        o = f"cluster_size={cs},refcount_bits={rb}" + (",extended_l2=on" if ext else "")
        both(capsys, qemu_img, tmp_path, "-O", "qcow2", "-o", o, "--size", str(size))


def test_required_size_fits_a_converted_copy(capsys, qemu_img, sources):
    """What measure promises is what convert needs: the copy fits in 'required'."""
    capsys.readouterr()
    assert blockbed_main(["img", "measure", "-O", "qcow2", "a.qcow2", "--output=json"]) == 0
    import json
    required = json.loads(capsys.readouterr().out)["required"]
    assert blockbed_main(["img", "convert", "-O", "qcow2", "a.qcow2", "c.qcow2"]) == 0
    assert (sources / "c.qcow2").stat().st_size <= required
