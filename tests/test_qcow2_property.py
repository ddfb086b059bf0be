"""Property tests: random operation sequences against a byte-array model.

Each sequence runs on an in-memory image (cluster sizes 512 B and 64 KiB,
v2 and v3, with and without a backing node; 16 and 64 KiB with extended L2
entries) and interleaves write, write_zeroes, discard, read, resize (grow),
flush and reopen.  After the
sequence the image must read as the model and check with no corruption and
no leak.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockbed.block.memory import MemoryDriver
from blockbed.block.qcow2.check import check_image
from blockbed.block.qcow2.driver import Qcow2Driver
from blockbed.block.qcow2.imagecreate import create_on_node

SIZE = 1 << 20

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.integers(1, 140_000),
              st.integers(1, 255)),
    st.tuples(st.just("zero"), st.integers(0, SIZE - 1), st.integers(1, 200_000), st.booleans()),
    st.tuples(st.just("discard"), st.integers(0, SIZE - 1), st.integers(1, 300_000), st.just(0)),
    st.tuples(st.just("read"), st.integers(0, SIZE - 1), st.integers(1, 100_000), st.just(0)),
    st.tuples(st.just("resize"), st.integers(0, 4), st.just(0), st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("compressed"), st.integers(0, SIZE - 1), st.just(0), st.integers(0, 255)),
    st.tuples(st.sampled_from(["snap-create", "snap-apply", "snap-delete"]), st.integers(0, 2),
              st.just(0), st.just(0)),
)


def _run(cluster: int, compat: str, with_backing: bool, ops, tiny_cache: bool = False,
         extended_l2: bool = False) -> None:
    mem = MemoryDriver()
    create_on_node(mem, SIZE, {"cluster_size": str(cluster), "compat": compat,
                               "refcount_bits": "16" if compat == "0.10" else "8",
                               "extended_l2": "on" if extended_l2 else "off"})
    backing = None
    model = bytearray(SIZE)
    if with_backing:
        backing = MemoryDriver(bytes(range(256)) * (SIZE // 256 // 2))   # shorter than the image
        model[:len(backing.buf)] = backing.buf
    opts = {"backing": backing} if backing is not None else {}
    if tiny_cache:     # constant eviction: dirty tables are written back through dependencies
        opts.update({"l2-cache-size": 2 * cluster, "refcount-cache-size": 2 * cluster})
    drv = Qcow2Driver(mem, options=opts)
    snaps: dict[str, bytearray] = {}
    from blockbed.block.qcow2 import snapshot as snapmod
    for kind, off, ln, arg in ops:
        if kind.startswith("snap-"):
            name = f"s{off}"
            if kind == "snap-create" and name not in snaps:
                snapmod.create_snapshot(drv, name)
                snaps[name] = bytearray(model)
            elif kind == "snap-apply" and name in snaps:
                snapmod.apply_snapshot(drv, name)
                model = bytearray(snaps[name])
            elif kind == "snap-delete" and name in snaps:
                snapmod.delete_snapshot(drv, name)
                del snaps[name]
            continue
        size = len(model)
        off = off % size
        ln = min(ln, size - off)
        cs = cluster
        if kind == "write":
            data = bytes([arg]) * ln
            drv.write(off, data)
            model[off:off + ln] = data
        elif kind == "zero":
            drv.write_zeroes(off, ln, may_unmap=arg)
            model[off:off + ln] = bytes(ln)
        elif kind == "discard":
            drv.discard(off, ln)
            a, b = -(-off // cs) * cs, (off + ln) // cs * cs
            if off + ln == size:
                b = size
            if a < b and not (compat == "0.10" and backing is not None):
                model[a:b] = bytes(b - a)
        elif kind == "read":
            buf = bytearray(ln)
            drv.read(off, memoryview(buf))
            assert buf == model[off:off + ln]
        elif kind == "resize":
            if snaps:
                continue            # QEMU refuses to resize images with snapshots too
            grow = off * 512 * 7
            drv.truncate(size + grow)
            model.extend(bytes(grow))
        elif kind == "flush":
            drv.flush()
        elif kind == "compressed":
            c = off // cs * cs
            n = min(cs, size - c)
            data = (bytes([arg]) * 37 + b"compressible") * (n // 49 + 1)
            drv.write_compressed(c, data[:n])
            model[c:c + n] = data[:n]
        elif kind == "reopen":
            drv.close()
            drv = Qcow2Driver(mem, options=opts)
            assert drv.length() == len(model)
    buf = bytearray(len(model))
    drv.read(0, memoryview(buf))
    assert buf == model
    drv.flush()
    res = check_image(drv)
    assert (res.corruptions, res.leaks, res.check_errors) == (0, 0, 0), res.messages[:5]
    drv.close()


SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(st.lists(op, max_size=25), st.booleans())
def test_512_byte_clusters(ops, backing):
    _run(512, "1.1", backing, ops)


@SETTINGS
@given(st.lists(op, max_size=25), st.booleans())
def test_64k_clusters(ops, backing):
    _run(65536, "1.1", backing, ops)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=30), st.booleans(), st.sampled_from([512, 4096]))
def test_tiny_metadata_caches(ops, backing, cluster):
    _run(cluster, "1.1", backing, ops, tiny_cache=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=20), st.booleans(), st.sampled_from([512, 65536]))
def test_v2_images(ops, backing, cluster):
    _run(cluster, "0.10", backing, ops)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=25), st.booleans(), st.sampled_from([16384, 65536]), st.booleans())
def test_extended_l2(ops, backing, cluster, tiny_cache):
    """Subcluster allocation: 128-bit L2 entries, 32 subclusters per cluster."""
    _run(cluster, "1.1", backing, ops, tiny_cache=tiny_cache, extended_l2=True)
