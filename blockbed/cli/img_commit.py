"""``blockbed img commit``: qemu-img 7.2's ``commit`` subcommand.

    commit [-q] [-f FMT] [-t CACHE] [-b BASE] [-r RATE_LIMIT] [-d] [-p] [--object ...]
           [--image-opts] FILENAME

Copy every range that the image or the images between it and BASE allocate into
BASE (default: the image's backing file), reading it through the image so BASE
ends up holding what the guest saw.  Ranges are copied as they read, zeros
included, as QEMU's commit job does (it reads and writes, it does not unmap).

Afterwards the image is emptied — its clusters dropped so it reads through its
backing file again (:mod:`blockbed.block.qcow2.makeempty`) — unless ``-d`` is given
or BASE was named with ``-b`` (the images in between then still hold their data
and the chain stays as it was, as in qemu-img).  ``-r`` limits the copy to that
many bytes per second.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..block.driver import BlockDriver, BlockError

COMMIT_BUFFER = 512 << 10          # block/commit.c COMMIT_BUFFER_SIZE


def register(s: argparse._SubParsersAction, guard) -> None:
    from .imageopts import add_arguments as add_image_arguments
    c = s.add_parser("commit", help="commit an image's changes into its backing file",
                     description="Write the image's data into its backing file (or BASE) "
                                 "and empty the image.")
    c.add_argument("-f", metavar="FMT", help="format of the image (probed if omitted)")
    c.add_argument("-t", metavar="CACHE", help="cache mode of the images (default writeback)")
    c.add_argument("-b", metavar="BASE",
                   help="commit down to this image of the backing chain (implies -d)")
    c.add_argument("-r", metavar="RATE_LIMIT", help="copy at most this many bytes per second")
    c.add_argument("-d", action="store_true", help="do not empty the image afterwards")
    c.add_argument("-p", action="store_true", help="show progress")
    c.add_argument("-q", action="store_true", help="quiet: print nothing")
    c.add_argument("filenames", nargs="*", metavar="FILENAME", help="the image to commit")
    add_image_arguments(c, image_opts=True)
    c.set_defaults(func=guard(cmd_commit))


def _err(msg: str, usage: bool = False) -> int:
    print(f"blockbed img: {msg}", file=sys.stderr)
    if usage:
        print("Try 'blockbed img --help' for more information", file=sys.stderr)
    return 1


def _find_base(top: BlockDriver, name: str) -> BlockDriver | None:
    """The image of ``top``'s backing chain (not ``top`` itself) that ``name`` names:
    the same file, compared by inode as QEMU compares resolved file names."""
    import os
    try:
        want = os.stat(name)
    except OSError:
        return None
    node = getattr(top, "backing", None)
    while node is not None:
        path = getattr(node, "filename", None)
        if path:
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                    return node
            except OSError:
                pass
        node = getattr(node, "backing", None)
    return None


def _allocated_above(top: BlockDriver, base: BlockDriver, offset: int, length: int
                     ) -> tuple[bool, int]:
    """Is the start of ``[offset, offset+length)`` allocated in ``top`` or an image
    between it and ``base``?  Returns (allocated, run length)."""
    node = top
    run = length
    while node is not None and node is not base:
        e = node.block_status(offset, run)[0]
        if e.allocated:
            return True, min(run, e.length)
        run = min(run, e.length)
        node = getattr(node, "backing", None)
    return False, run


def cmd_commit(a: argparse.Namespace) -> int:
    from .img import open_img, _open_msg
    from .img_bitmap import _cvtnum
    from .img_rebase import Progress, _check_cache
    if len(a.filenames) != 1:
        return _err("Expecting one image file name", usage=True)
    filename = a.filenames[0]
    msg = _check_cache(a.t)
    if msg:
        return _err(msg)
    rate = None
    if a.r is not None:
        rate = _cvtnum("rate limit", a.r)
        if rate is None:
            return 1
    if getattr(a, "image_opts", False):
        from .imageopts import _specs, parse
        _specs.setdefault(filename, parse(filename))
    try:
        top, _fmt = open_img(filename, a.f, read_only=False)
    except BlockError as e:
        return _err(_open_msg(filename, e))
    empty = not a.d and a.b is None
    emptied_path = None
    try:
        if getattr(top, "backing", None) is None:
            return _err("Image does not have a backing file")
        if a.b is not None:
            base = _find_base(top, a.b)
            if base is None:
                return _err(f"Did not find '{a.b}' in the backing chain of '{filename}'")
        else:
            base = top.backing
        _reopen_rw(base)
        bar = Progress(a.p and not a.q)
        bar.set(0.0)
        copy_into_base(top, base, rate, bar)
        base.flush()
        bar.set(100.0)
        bar.end()
        if empty:
            from ..block.qcow2 import makeempty
            if getattr(top, "driver_name", "") != "qcow2":
                return _err("Image committed, but emptying it failed: Operation not supported")
            if makeempty.can_completely_empty(top):
                emptied_path = top.filename
            else:
                makeempty.discard_all(top)
    finally:
        top.close()
    if emptied_path is not None:
        from ..block.qcow2 import makeempty
        makeempty.completely_empty_file(emptied_path)
    if not a.q:
        print("Image committed.")
    return 0


def _reopen_rw(node: BlockDriver) -> None:
    """Backing files are opened read-only; the commit target must take writes."""
    reopen = getattr(node, "reopen_rw", None)
    if reopen is None:
        raise BlockError(13, "Cannot commit: the base image cannot be reopened for writing")
    reopen()


def copy_into_base(top: BlockDriver, base: BlockDriver, rate: int | None, bar) -> int:
    """Copy what ``top`` and the images above ``base`` allocate into ``base``."""
    size = top.length()
    if base.length() < size:
        base.truncate(size)          # QEMU grows the base to the top's size first
    buf = bytearray(COMMIT_BUFFER)
    mv = memoryview(buf)
    copied = 0
    start = time.monotonic()
    offset = 0
    while offset < size:
        n = min(COMMIT_BUFFER, size - offset)
        allocated, n = _allocated_above(top, base, offset, n)
        if allocated:
            top.read(offset, mv[:n])
            base.write(offset, mv[:n])
            copied += n
            if rate:
                ahead = copied / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        offset += n
        bar.set(100.0 * offset / size)
    return copied
