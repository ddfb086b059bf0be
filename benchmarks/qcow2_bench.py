"""qcow2 benchmarks: blockbed against qemu-img in the same run, printing ratios.

Workloads (targets from the qcow2 issue):
  read4k     4 KiB reads of allocated clusters (IOPS, higher is better; target >= 1.0x)
  write4k    4 KiB sequential allocating writes (IOPS; target >= 1.0x)
  write64k   64 KiB allocating writes (IOPS; target >= 0.8x)
  convert    1 GiB raw -> qcow2, wall time (lower is better; target <= 1.2x)
  prealloc   preallocation=metadata, 512-byte clusters, 1 GiB (4 GiB with --full;
             wall; target <= 1/20)

qemu-img bench runs with -d 1 (one request in flight, as blockbed's loop) and
cache=writeback; blockbed runs the same pattern through the qcow2 driver on
the file driver.  ``--quick`` shrinks the sizes (for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blockbed.block import registry  # noqa: E402
from blockbed.block.qcow2.imagecreate import create  # noqa: E402


def qemu_bench(qemu_img: str, path: Path, count: int, size: int, write: bool) -> float:
    """IOPS reported by qemu-img bench (sequential, step = size, depth 1)."""
    args = [qemu_img, "bench", "-f", "qcow2", "-t", "writeback", "-d", "1", "-c", str(count),
            "-s", str(size), "-S", str(size)]
    if write:
        args.append("-w")
    out = subprocess.run(args + [str(path)], capture_output=True, text=True, check=True).stdout
    secs = float(re.search(r"Run completed in ([0-9.]+) seconds", out).group(1))
    return count / secs


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_read(qemu_img, d: Path, count: int, img_size: int) -> tuple[float, float]:
    img = d / "read.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(img), str(img_size)], check=True)
    node = registry.open_image(str(img), "qcow2")
    chunk = b"\x5a" * (1 << 20)
    for off in range(0, img_size, 1 << 20):
        node.write(off, chunk)
    node.close()
    theirs = qemu_bench(qemu_img, img, count, 4096, write=False)
    node = registry.open_image(str(img), "qcow2", read_only=True)
    buf = memoryview(bytearray(4096))
    rnd = random.Random(1)
    offs = [rnd.randrange(img_size // 4096) * 4096 for _ in range(count)]
    read = node.read

    def run():
        for o in offs:
            read(o, buf)
    ours = count / timed(run)
    node.close()
    return ours, theirs


def bench_write(qemu_img, d: Path, count: int, size: int) -> tuple[float, float]:
    total = count * size
    q = d / "wq.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(q), str(total)], check=True)
    theirs = qemu_bench(qemu_img, q, count, size, write=True)
    q.unlink()
    b = d / "wb.qcow2"
    create(str(b), total, {})
    node = registry.open_image(str(b), "qcow2")
    data = memoryview(b"\x33" * size)
    write = node.write

    def run():
        for i in range(count):
            write(i * size, data)
    ours = count / timed(run)
    node.close()
    chk = subprocess.run([qemu_img, "check", str(b)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout
    b.unlink()
    return ours, theirs


def bench_convert(qemu_img, d: Path, size: int) -> tuple[float, float]:
    src = d / "src.raw"
    blk = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(size >> 20):
            f.write(blk if i % 4 else bytes(1 << 20))      # a quarter zeros, as real disks
    q, b = d / "cq.qcow2", d / "cb.qcow2"
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    # byte-compile first, as an installed package is: with PYTHONDONTWRITEBYTECODE set,
    # every run would otherwise recompile blockbed's sources (~35 ms of "start-up")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "blockbed")],
                   check=True, stdout=subprocess.DEVNULL)
    theirs_runs, ours_runs = [], []
    run_q = lambda: subprocess.run([qemu_img, "convert", "-O", "qcow2", str(src), str(q)],
                                   check=True)
    run_b = lambda: subprocess.run([sys.executable, "-m", "blockbed", "img", "convert", "-O",
                                    "qcow2", str(src), str(b)], check=True, env=env)
    for r in range(4):      # best of four, alternating order, each after a sync
        order = [(run_q, theirs_runs, q), (run_b, ours_runs, b)]
        for fn, runs, out in (order if r % 2 == 0 else order[::-1]):
            if out.exists():
                out.unlink()
            os.sync()
            runs.append(timed(fn))
    theirs, ours = min(theirs_runs), min(ours_runs)
    cmp = subprocess.run([qemu_img, "compare", str(q), str(b)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout
    for p in (src, q, b):
        p.unlink()
    return ours, theirs


def bench_prealloc(qemu_img, d: Path, size: int) -> tuple[float, float]:
    q, b = d / "pq.qcow2", d / "pb.qcow2"
    opts = "preallocation=metadata,cluster_size=512"
    theirs = timed(lambda: subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts,
                                           str(q), str(size)], check=True))
    ours = timed(lambda: create(str(b), size, {"preallocation": "metadata",
                                               "cluster_size": "512"}))
    chk = subprocess.run([qemu_img, "check", str(b)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout
    q.unlink()
    b.unlink()
    return ours, theirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--full", action="store_true",
                    help="the issue's 4 GiB preallocation case (qemu-img needs minutes)")
    ap.add_argument("--only", nargs="*", default=None,
                    choices=["read4k", "write4k", "write64k", "convert", "prealloc"])
    args = ap.parse_args()
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        print("qemu-img is not installed; nothing to compare against", file=sys.stderr)
        return 1
    quick = args.quick
    want = set(args.only or ["read4k", "write4k", "write64k", "convert", "prealloc"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="qcow2-bench-", dir=os.environ.get("TMPDIR")) as td:
        d = Path(td)
        if "read4k" in want:
            o, t = bench_read(qemu_img, d, 20_000 if quick else 200_000, 64 << 20)
            rows.append(("read4k   random 4 KiB reads (IOPS)", o, t, o / t, ">= 1.0"))
        if "write4k" in want:
            o, t = bench_write(qemu_img, d, 10_000 if quick else 100_000, 4096)
            rows.append(("write4k  sequential allocating (IOPS)", o, t, o / t, ">= 1.0"))
        if "write64k" in want:
            o, t = bench_write(qemu_img, d, 2_000 if quick else 16_384, 65536)
            rows.append(("write64k allocating (IOPS)", o, t, o / t, ">= 0.8"))
        if "convert" in want:
            o, t = bench_convert(qemu_img, d, (64 if quick else 1024) << 20)
            rows.append(("convert  raw->qcow2 (s)", o, t, o / t, "<= 1.2"))
        if "prealloc" in want:
            psize = (64 << 20) if quick else (4 << 30) if args.full else (1 << 30)
            o, t = bench_prealloc(qemu_img, d, psize)
            rows.append(("prealloc metadata, 512 B clusters (s)", o, t, o / t, "<= 0.05"))
    print(f"{'benchmark':<42}{'blockbed':>12}{'qemu-img':>12}{'ratio':>9}  target")
    for name, o, t, r, target in rows:
        print(f"{name:<42}{o:>12.2f}{t:>12.2f}{r:>9.3f}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
