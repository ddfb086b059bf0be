"""``blockbed io``: the qemu-io role (issue #15) — run qemu-io commands on an image.

``-c CMD`` (repeatable) runs commands in order; without -c commands are read from
stdin (each prompted with "qemu-io> " on stdout, tty or not, as qemu-io 7.2).  Exit status 1 if a command
failed, as qemu-io 7.2.
"""

from __future__ import annotations

import argparse
import sys

from ..block.driver import BlockError


def cmd_io(a: argparse.Namespace) -> int:
    from ..block.backend import BlockBackend
    from .img import open_img
    from .imageopts import apply
    from .io_commands import IoSession, run_line
    from ..block.cachemode import CacheMode
    cache = a.t or ("none" if a.n else "writeback")
    try:
        CacheMode.parse(cache)
    except ValueError:
        print(f"blockbed io: Invalid cache option: {cache}", file=sys.stderr)
        return 1
    try:
        apply(a)
        node, fmt = open_img(a.filename, a.f, read_only=a.r, force_share=a.U)
    except (BlockError, ValueError) as e:
        print(f"blockbed io: can't open device {a.filename}: {e}", file=sys.stderr)
        return 1
    blk = BlockBackend(node, cache, discard="unmap")   # qemu-io opens with BDRV_O_UNMAP
    session = IoSession(fmt, a.filename)
    status = 0
    try:
        if a.c:
            for line in a.c:
                if line.strip() in ("quit", "q"):
                    break
                status |= run_line(blk, line, session)
                sys.stdout.flush()
        else:
            while True:
                # qemu-io 7.2 prints the prompt on stdout even when stdin is not a tty.
                print("qemu-io> ", end="", flush=True)
                line = sys.stdin.readline()
                if not line or line.strip() in ("quit", "q"):
                    break
                status |= run_line(blk, line, session)
    finally:
        blk.close()
    return status


def register(sub: argparse._SubParsersAction) -> None:
    from .imageopts import add_arguments
    p = sub.add_parser("io", help="qemu-io's commands on an image (read, write, readv, writev, aio_*, discard, flush, truncate, length, map, alloc, info)")
    p.add_argument("-f", metavar="FMT", help="format of the image (probed if omitted)")
    p.add_argument("-c", action="append", metavar="CMD",
                   help="run CMD (repeatable, in order); without -c commands come from stdin")
    p.add_argument("-r", action="store_true", help="open the image read-only")
    p.add_argument("-n", action="store_true", help="cache=none (as qemu-io -n)")
    p.add_argument("-t", metavar="CACHE", help="cache mode (default writeback)")
    p.add_argument("-U", action="store_true", help="open without locking out other users "
                                                   "of the image (qemu-io -U)")
    p.add_argument("filename", help="the image")
    add_arguments(p, image_opts=True)
    p.set_defaults(func=cmd_io, parser=p)
