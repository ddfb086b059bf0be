"""``blockbed img bench``: qemu-img 7.2's ``bench`` subcommand.

    bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N] [-i AIO] [-n] [--no-drain]
          [-o OFFSET] [--pattern=BYTE] [-q] [-s BUFFER_SIZE] [-S STEP] [-t CACHE] [-w] [-U]
          [--image-opts] [--object ...] FILENAME

COUNT requests (default 75000) of BUFFER_SIZE bytes (default 4 KiB), reads or with
``-w`` writes of the byte BYTE, starting at OFFSET and stepping STEP bytes (default
the buffer size), wrapping before the end of the image as qemu-img does.  With
``--flush-interval=N`` a flush follows every N write requests.  The same lines as
qemu-img are printed, so scripts that parse "Run completed in X seconds." work.

blockbed's block layer is synchronous: DEPTH is accepted, checked and printed, but
the requests run one after another (``benchmarks/block_bench.py`` compares the two
engines).  A queue depth of 0, which makes qemu-img 7.2 wait forever, is refused.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..block.driver import BlockError


def register(s: argparse._SubParsersAction, guard) -> None:
    from .imageopts import add_arguments as add_image_arguments
    b = s.add_parser("bench", help="run a simple I/O benchmark on an image",
                     description="Time COUNT sequential read (or -w write) requests.")
    b.add_argument("-c", metavar="COUNT", help="number of requests (default 75000)")
    b.add_argument("-d", metavar="DEPTH", help="requests in flight as qemu-img counts them "
                                               "(default 64; blockbed runs them in turn)")
    b.add_argument("-f", metavar="FMT", help="format of the image (probed if omitted)")
    b.add_argument("--flush-interval", metavar="N", help="flush after every N writes")
    b.add_argument("--no-drain", action="store_true",
                   help="with --flush-interval: do not wait for requests before a flush")
    b.add_argument("-i", metavar="AIO", help="threads, native or io_uring (accepted)")
    b.add_argument("-n", action="store_true", help="native AIO (as -i native; needs -t none)")
    b.add_argument("-o", metavar="OFFSET", help="offset of the first request (default 0)")
    b.add_argument("--pattern", metavar="BYTE", help="byte written by -w (default 0)")
    b.add_argument("-q", action="store_true", help="accepted (qemu-img prints the same)")
    b.add_argument("-s", metavar="BUFFER_SIZE", help="bytes per request (default 4096)")
    b.add_argument("-S", metavar="STEP", help="bytes between request offsets "
                                              "(default the buffer size)")
    b.add_argument("-t", metavar="CACHE", help="cache mode (default writeback)")
    b.add_argument("-w", action="store_true", help="write instead of read")
    b.add_argument("-U", "--force-share", dest="U", action="store_true",
                   help="open the image even if another process holds it (reads only)")
    b.add_argument("filenames", nargs="*", metavar="FILENAME", help="the image")
    add_image_arguments(b, image_opts=True)
    b.set_defaults(func=guard(cmd_bench))


def _err(msg: str, usage: bool = False) -> int:
    print(f"blockbed img: {msg}", file=sys.stderr)
    if usage:
        print("Try 'blockbed img --help' for more information", file=sys.stderr)
    return 1


def _int(text: str, lo: int, hi: int) -> int | None:
    try:
        v = int(text, 0)
    except ValueError:
        return None
    return v if lo <= v <= hi else None


def cmd_bench(a: argparse.Namespace) -> int:
    from .img import open_img, _open_msg
    from .img_bitmap import _cvtnum
    from .img_rebase import _check_cache
    count, depth, offset, bufsize, step, flush_every, pattern = 75000, 64, 0, 4096, None, 0, 0
    if a.c is not None:
        count = _int(a.c, 0, 2**31 - 1)
        if count is None:
            return _err("Invalid request count specified")
    if a.d is not None:
        depth = _int(a.d, 1, 2**31 - 1)
        if depth is None:
            return _err("Invalid queue depth specified")
    if a.i is not None and a.i not in ("threads", "native", "io_uring"):
        return _err(f"Invalid aio option: {a.i}")
    if a.o is not None:
        offset = _cvtnum("offset", a.o)
        if offset is None:
            return 1
    if a.s is not None:
        bufsize = _cvtnum("buffer size", a.s)
        if bufsize is None:
            return 1
    if a.S is not None:
        step = _cvtnum("step size", a.S)
        if step is None:
            return 1
    if a.pattern is not None:
        pattern = _int(a.pattern, 0, 255)
        if pattern is None:
            return _err("Invalid pattern byte specified")
    if a.flush_interval is not None:
        flush_every = _int(a.flush_interval, 0, 2**31 - 1)
        if flush_every is None:
            return _err("Invalid flush interval specified")
    if a.n:
        a.i = "native"
    cache = a.t or "writeback"
    msg = _check_cache(cache)
    if msg:
        return _err(msg)
    if len(a.filenames) != 1:
        return _err("Expecting one image file name", usage=True)
    filename = a.filenames[0]
    if flush_every and not a.w:
        return _err("--flush-interval is only available in write tests")
    if flush_every and flush_every < depth:
        return _err("Flush interval can't be smaller than depth")
    if step is None:
        step = bufsize
    if getattr(a, "image_opts", False):
        from .imageopts import _specs, parse
        _specs.setdefault(filename, parse(filename))
    from ..block.cachemode import CacheMode
    direct = CacheMode.parse(cache).direct
    if a.i == "native" and not direct:
        return _err(f"Could not open '{filename}': aio=native was specified, but it requires "
                    "cache.direct=on, which was not specified.")
    if a.U and a.w:
        return _err(f"Could not open '{filename}': force-share=on can only be used with "
                    "read-only images")
    try:
        node, _ = open_img(filename, a.f, read_only=not a.w, force_share=a.U, cache=cache)
    except BlockError as e:
        return _err(_open_msg(filename, e))
    try:
        size = node.length()
        print(f"Sending {count} {'write' if a.w else 'read'} requests, {bufsize} bytes each, "
              f"{depth} in parallel (starting at offset {offset}, step size {step})")
        if flush_every:
            print(f"Sending flush every {flush_every} requests")
        sys.stdout.flush()
        try:
            elapsed = run(node, count, bufsize, offset, step, size, a.w, pattern, flush_every)
        except (BlockError, OSError):
            return _err("Failed request: Input/output error")
        print(f"Run completed in {elapsed:.3f} seconds.")
    finally:
        node.close()
    return 0


def run(node, count: int, bufsize: int, offset: int, step: int, size: int, write: bool,
        pattern: int, flush_every: int) -> float:
    """The requests; returns the seconds they took.  Offsets advance by ``step`` and
    wrap modulo the image size, as qemu-img 7.2's bench_cb does: the first one is not
    checked, and a wrapped request that overruns the end fails with EIO, as there
    (later QEMU wraps modulo ``size - bufsize``).  An empty image keeps offset 0 where
    7.2 divides by zero."""
    from ..block.driver import check_request
    buf = memoryview(bytearray(bytes([pattern]) * bufsize))
    t0 = time.perf_counter()
    for i in range(count):
        check_request(node, offset, bufsize)
        if write:
            node.write(offset, buf)
            if flush_every and (i + 1) % flush_every == 0:
                node.flush()
        else:
            node.read(offset, buf)
        offset += step
        offset = offset % size if size else 0
    return time.perf_counter() - t0
