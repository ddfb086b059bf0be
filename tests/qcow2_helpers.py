"""Shared helpers for the qcow2 tests: random workloads against a byte-array model."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from blockbed.block import registry
from blockbed.block.driver import BlockDriver
from blockbed.block.qcow2.imagecreate import create


def run_workload(node: BlockDriver, model: bytearray, seed: int, nops: int,
                 v2_backing: bool = False) -> None:
    """Random writes/zero writes/discards/reads/flushes; asserts every read against the model.

    ``discard`` makes whole clusters read as zeros (v3, or v2 without backing);
    with a v2 image over a backing file the driver ignores discards.
    """
    rnd = random.Random(seed)
    size = len(model)
    cs = getattr(node, "cluster_size", 65536)
    for _ in range(nops):
        op = rnd.random()
        off = rnd.randrange(0, size)
        if rnd.random() < 0.3:
            off -= off % 512
        ln = min(size - off, rnd.choice([1, 511, 512, 4096, cs, 3 * cs + 17, 200_000]))
        if op < 0.55:
            data = rnd.randbytes(ln) if rnd.random() < 0.3 else bytes([rnd.randrange(1, 256)]) * ln
            node.write(off, data)
            model[off:off + ln] = data
        elif op < 0.68:
            node.write_zeroes(off, ln, may_unmap=rnd.random() < 0.5)
            model[off:off + ln] = bytes(ln)
        elif op < 0.78:
            node.discard(off, ln)
            a = -(-off // cs) * cs
            b = (off + ln) // cs * cs
            if off + ln == size:
                b = size
            if a < b and not v2_backing:
                model[a:b] = bytes(b - a)
        elif op < 0.83:
            node.flush()
        else:
            buf = bytearray(ln)
            node.read(off, memoryview(buf))
            assert buf == model[off:off + ln], f"read mismatch at {off}+{ln}"
    buf = bytearray(size)
    node.read(0, memoryview(buf))
    assert buf == model, "final content differs from the model"


def raw_contents(qemu_img: str, path: Path, size: int) -> bytearray:
    out = path.with_suffix(".ref-raw")
    subprocess.run([qemu_img, "convert", "-O", "raw", str(path), str(out)], check=True)
    data = bytearray(out.read_bytes())
    out.unlink()
    return data.ljust(size, b"\0")[:size]


def blockbed_contents(path: Path, size: int, **options) -> bytearray:
    """The first ``size`` bytes of a qcow2 image as blockbed reads them (read-only)."""
    from blockbed.block import registry
    node = registry.open_image(str(path), "qcow2", read_only=True, options=options or None)
    try:
        got = bytearray(size)
        node.read(0, memoryview(got))
    finally:
        node.close()
    return got


def blockbed_image(path: Path, size: int, opts: dict) -> None:
    create(str(path), size, opts)


def open_rw(path: Path) -> BlockDriver:
    return registry.open_image(str(path), "qcow2")
