"""``blockbed img convert``: qemu-img 7.2's convert over blockbed's block layer.

The copy loop reads CHUNK-sized pieces of the source, finds zero granules without
copying (:func:`_zero_runs`, checked by :func:`_verified_zero`) so the target stays
sparse, and writes the rest in order through :class:`_AsyncWrites` (one writer
thread, so the kernel's copies overlap the next read).  ``-c`` compresses clusters,
on ``-m N`` threads.  The option parsing and the other subcommands are in :mod:`.img`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..block.driver import BlockDriver, BlockError
from .img import (CHUNK, _fail, _parse_o, _progress, chain_status, open_arg, open_img,
                  unknown_format)


def _zero_runs(buf: bytearray, n: int, gran: int) -> list[tuple[int, int, bool]]:
    """(start, length, is_zero) runs of ``buf[:n]`` at ``gran`` granularity (qemu-img
    convert ``-S``): a granule is zero when all its bytes are; a partial granule at the
    end is data unless the whole buffer is zero.

    No Python step per granule and no copies: zero checks are
    ``bytearray.startswith(zeros, start, end)`` (a memcmp in place), and candidate
    granules come from a byte mask -- the first and the last byte of every granule,
    taken with strided slices and OR-ed as big integers -- whose runs of zero bytes a
    regular expression finds.  Each candidate run is then verified with one compare.
    """
    zeros = _ZERO_VIEW
    if buf.startswith(zeros[:n], 0, n):
        return [(0, n, True)]
    full = n // gran
    runs: list[tuple[int, int, bool]] = []
    cur = 0
    if full:
        span = full * gran
        mask = (int.from_bytes(buf[0:span:gran], "little")
                | int.from_bytes(buf[gran - 1:span:gran], "little")).to_bytes(full, "little")
        for m in _ZERO_BYTES.finditer(mask):
            for a, b in _verified_zero(buf, m.start() * gran, m.end() * gran, gran):
                if a > cur:
                    runs.append((cur, a - cur, False))
                runs.append((a, b - a, True))
                cur = b
    if cur < n:
        runs.append((cur, n - cur, False))
    return runs


def _verified_zero(buf: bytearray, a: int, b: int, gran: int) -> list[tuple[int, int]]:
    """The all-zero granule runs within candidate run [a, b)."""
    zeros = _ZERO_VIEW
    if buf.startswith(zeros[:b - a], a, b):
        return [(a, b)]
    out: list[tuple[int, int]] = []
    z = zeros[:gran]
    for g in range(a, b, gran):
        if buf.startswith(z, g, g + gran):
            if out and out[-1][1] == g:
                out[-1] = (out[-1][0], g + gran)
            else:
                out.append((g, g + gran))
    return out


_ZERO_VIEW = memoryview(bytes(CHUNK))
_ZERO_BYTES = re.compile(rb"\x00+")


def cmd_convert(a: argparse.Namespace) -> int:
    out_fmt = a.O or "raw"
    opts = _parse_o(a.o)
    if a.c and out_fmt != "qcow2":
        return _fail(f"Compression not supported for this file format ({out_fmt})")
    if a.c and (opts.get("encrypt.format") or opts.get("encryption") in ("on", "true")):
        return _fail("Compression and encryption not supported at the same time")
    if a.skip_broken_bitmaps and not a.bitmaps:
        return _fail("Use of --skip-broken-bitmaps requires --bitmaps")
    try:
        a.m = 8 if a.m is None else int(a.m)
    except ValueError:
        a.m = 0
    if not 1 <= a.m <= 16:
        return _fail("Invalid number of coroutines. Allowed number of coroutines is between "
                     "1 and 16")
    sparse = 4096 if a.S is None else _sparse_size(a.S)
    from .img_ova import dispatch_convert
    rc = dispatch_convert(a, out_fmt, lambda s, d: _convert_into(a, s, d, out_fmt, opts, sparse))
    if rc is not None:
        return rc
    src, _ = open_arg(a.src, a.f, force_share=a.U)
    if unknown_format(out_fmt):            # after the source, as qemu-img convert
        src.close()
        return _fail(f"Unknown file format '{out_fmt}'")
    try:
        return _convert_into(a, src, a.dst, out_fmt, opts, sparse)
    finally:
        src.close()


def _convert_into(a: argparse.Namespace, src: BlockDriver, dst_path: str, out_fmt: str,
                  opts: dict, sparse: int) -> int:
    """Convert the open ``src`` into ``dst_path`` (created unless -n); the caller closes
    ``src``."""
    from ..block import registry
    if a.bitmaps:
        from .img_bitmap import convert_bitmaps_refusal
        why = convert_bitmaps_refusal(src, out_fmt, a.skip_broken_bitmaps)
        if why:
            return _fail(why)
    size = src.length()
    if not a.n:
        try:
            registry.create_image(dst_path, out_fmt, size, opts)
        except BlockError as e:           # qemu-img convert's wording
            return _fail(f"{dst_path}: error while converting {out_fmt}: {e}")
    unsafe = (a.t or "unsafe") == "unsafe"     # qemu-img convert's default cache mode
    dst, writer = _open_output(dst_path, out_fmt, unsafe, opts.get("encrypt.key-secret"))
    try:
        _copy(a, src, dst, writer, size, sparse, fresh=not a.n)
        if a.c and hasattr(dst, "align_file_end"):
            dst.align_file_end()     # qemu-img's final zero-length compressed write
        if a.bitmaps:
            from .img_bitmap import convert_copy_bitmaps
            convert_copy_bitmaps(src, dst, lambda m: print(f"blockbed img: warning: {m}",
                                                           file=sys.stderr))
        if not unsafe:
            dst.flush()
    finally:
        dst.close()
    if a.p:
        _progress(100.0)
        sys.stdout.write("\n")
    return 0


def _copy(a: argparse.Namespace, src: BlockDriver, dst: BlockDriver,
          writer: "_AsyncWrites | None", size: int, sparse: int, fresh: bool) -> None:
    """The convert loop: block status of the source in large windows, data in 2 MiB
    chunks through a ring of buffers (a buffer is reused only once the writes that
    still point into it have completed).  ``-c`` with ``-m N``: clusters are compressed
    on up to N threads."""
    pool = None
    if a.c and getattr(a, "m", 1) > 1 and hasattr(dst, "compress_cluster") and size > CHUNK:
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=min(a.m, os.cpu_count() or 1))
    try:
        _copy_loop(a, src, dst, writer, size, sparse, fresh, pool)
    finally:
        if pool is not None:
            pool.shutdown()


def _copy_loop(a: argparse.Namespace, src: BlockDriver, dst: BlockDriver,
               writer: "_AsyncWrites | None", size: int, sparse: int, fresh: bool,
               pool) -> None:
    # buffers are made on first use: a small image should not pay for 16 MiB of zeroing
    ring: list[bytearray | None] = [None] * (8 if writer else 1)
    ring_seq = [0] * len(ring)
    slot = 0
    if a.p:
        _progress(0.0)
    window = 256 << 20
    pos = 0
    while pos < size:
        wend = min(size, pos + window)
        for e in chain_status(src, pos, wend - pos):
            if e.zero and not e.data:
                if not fresh:
                    dst.write_zeroes(e.start, e.length)
                continue
            off, end = e.start, e.start + e.length
            while off < end:
                n = min(CHUNK, end - off)
                buf = ring[slot]
                if buf is None:
                    buf = ring[slot] = bytearray(min(CHUNK, size))
                if writer is not None:
                    writer.wait_upto(ring_seq[slot])
                view = memoryview(buf)[:n]
                src.read(off, view)
                if a.c:
                    _write_compressed(dst, off, buf, n, pool)
                elif sparse and fresh:
                    for s_, ln, z in _zero_runs(buf, n, sparse):
                        if not z:
                            dst.write(off + s_, view[s_:s_ + ln])
                else:
                    dst.write(off, view)
                if writer is not None:
                    ring_seq[slot] = writer.seq
                slot = (slot + 1) % len(ring)
                off += n
        pos = wend
        if a.p:
            _progress(pos * 100 / size)


def _write_compressed(dst: BlockDriver, start: int, buf: bytearray, n: int, pool=None) -> None:
    """Compress cluster by cluster; all-zero clusters stay unallocated (qemu-img -c).
    With a thread pool (``-m``) the clusters of the chunk are compressed in parallel
    first, then written in guest order, so the output does not depend on ``-m``."""
    cs = dst.cluster_size
    mv = memoryview(buf)
    pieces: list[tuple[int, memoryview, bool]] = []      # (guest offset, data, compress?)
    pos = 0
    while pos < n:
        g = start + pos
        cend = min(n, (g // cs + 1) * cs - start)
        piece = mv[pos:cend]
        if not buf.startswith(_ZERO_VIEW[:len(piece)], pos, cend):
            whole = g % cs == 0 and (len(piece) == cs or g + len(piece) == dst.length())
            pieces.append((g, piece, whole))
        pos = cend
    comps: list[bytes | None] = [None] * len(pieces)
    if pool is not None:
        todo = [i for i, (_, _, whole) in enumerate(pieces) if whole]
        for i, c in zip(todo, pool.map(dst.compress_cluster, [pieces[i][1] for i in todo])):
            comps[i] = c
    for (g, piece, whole), comp in zip(pieces, comps):
        if whole:
            dst.write_compressed(g, piece, comp) if comp is not None else \
                dst.write_compressed(g, piece)
        else:
            dst.write(g, piece)


class _AsyncWrites(BlockDriver):
    """Under the output format during ``convert`` with cache=unsafe: writes run on
    one worker thread (``pwritev`` releases the GIL), so the kernel copies overlap
    with reading and scanning the next chunk.  Writes stay in submission order;
    reads, flush and close wait for them.  Callers must not modify a buffer after
    passing it (the qcow2 driver writes fresh bytes; convert's data buffers are
    tracked with :meth:`wait_upto`).

    A bare thread and a C ``SimpleQueue`` rather than an executor: a submission
    costs one ``put`` (no future, no lock on the caller's side), which matters at a
    few thousand writes per second of a convert.  A failed write is re-raised by
    the next call that waits (and by :meth:`close`); the writes after it are
    skipped, as a failed convert leaves the target unusable anyway."""

    driver_name = "async-writes"
    MAX_PENDING = 64

    def __init__(self, node: BlockDriver):
        import threading
        from _queue import SimpleQueue
        self.node = node
        self.path = getattr(node, "path", None)
        self.read_only = node.read_only
        self._len = node.length()
        self.seq = 0                    # last submitted write
        self._done = 0                  # last completed (or skipped) write
        self._error: BaseException | None = None
        self._queue: SimpleQueue = SimpleQueue()
        self._cv = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="convert-write", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            seq, offset, bufs = item
            if self._error is None:
                try:
                    self.node.writev(offset, bufs)
                except BaseException as e:     # handed to the submitting thread
                    self._error = e
            with self._cv:
                self._done = seq
                self._cv.notify_all()

    def wait_upto(self, seq: int) -> None:
        """Wait for every write submitted up to ``seq``; re-raise a failed one."""
        if self._done < seq:
            with self._cv:
                while self._done < seq:
                    self._cv.wait()
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        had = self._done < self.seq
        self.wait_upto(self.seq)
        if had and hasattr(self.node, "refresh_length"):
            # the worker's writes may have raced on the file node's cached size
            self.node.refresh_length()

    def read(self, offset: int, buf: memoryview) -> None:
        self._drain()
        self.node.read(offset, buf)

    def write(self, offset: int, data, fua: bool = False) -> None:
        self.writev(offset, [data], fua)

    def writev(self, offset: int, bufs, fua: bool = False) -> None:
        # every write goes through the one worker, so writes to overlapping ranges keep
        # their order (a cluster's COW write and a later in-place write to it)
        n = sum(len(b) for b in bufs)
        self._len = max(self._len, offset + n)
        if fua:
            self._drain()
            self.node.writev(offset, bufs, fua)
            return
        if self._error is not None:
            raise self._error
        self.seq += 1
        self._queue.put((self.seq, offset, list(bufs)))
        if self.seq - self._done > self.MAX_PENDING:
            self.wait_upto(self.seq - self.MAX_PENDING)

    def flush(self) -> None:
        self._drain()
        self.node.flush()

    def discard(self, offset: int, length: int) -> None:
        self._drain()
        self.node.discard(offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        self._drain()
        self.node.write_zeroes(offset, length, may_unmap)
        self._len = max(self._len, offset + length)

    def block_status(self, offset: int, length: int):
        self._drain()
        return self.node.block_status(offset, length)

    def length(self) -> int:
        return self._len

    def truncate(self, length: int) -> None:
        self._drain()
        self.node.truncate(length)
        self._len = self.node.length()

    def children(self):
        return (self.node,)

    def close(self) -> None:
        try:
            self._drain()
        finally:
            self._queue.put(None)
            self._worker.join()
            self.node.close()


def _open_output(path: str, fmt: str, unsafe: bool, key_secret: str | None = None
                 ) -> "tuple[BlockDriver, _AsyncWrites | None]":
    """The convert target: with cache=unsafe, qcow2 over async writes over the
    preallocate filter over the file (qcow2 allocates densely, so reserving ahead
    costs no sparseness; raw output is left without it)."""
    key = {"encrypt.key-secret": key_secret} if key_secret and fmt == "qcow2" else {}
    if not unsafe or fmt != "qcow2":
        node, _ = open_img(path, fmt, read_only=False,
                           extra={**({"cache.no-flush": True} if unsafe else {}), **key})
        return node, None
    from ..block.file import FileDriver
    from ..block.preallocate import PreallocateDriver
    from ..block.qcow2 import open as qcow2_open
    proto = _AsyncWrites(PreallocateDriver(FileDriver(path)))
    try:
        return qcow2_open(proto, read_only=False, options={"cache.no-flush": True,
                                                            "filename": path, **key}), proto
    except BaseException:
        proto.close()
        raise


def _sparse_size(s: str) -> int:
    from ..block.qcow2.imagecreate import parse_size
    return parse_size(s)
