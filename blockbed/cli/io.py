"""``blockbed io``: the qemu-io role (issue #15) — run qemu-io commands on an image.

``-c CMD`` (repeatable) runs commands in order; without -c commands are read from
stdin (each prompted with "qemu-io> " on stdout, tty or not, as qemu-io 7.2).  Exit status 1 if a command
failed, as qemu-io 7.2.  The image is optional: ``open``/``close``/``reopen``
(blockbed/cli/io_open.py) manage the one image of the session.
"""

from __future__ import annotations

import argparse
import sys

from ..block.driver import BlockError


class _NoImage(Exception):
    """No image on the command line."""


def cmd_io(a: argparse.Namespace) -> int:
    from .imageopts import apply
    from .io_commands import run_line
    from .io_open import IoSession, OpenFailed, OpenParams, check_aio, parse_aio, parse_discard
    from ..block.cachemode import CacheMode
    cache = a.t or ("none" if a.n else "writeback")
    try:
        CacheMode.parse(cache)
    except ValueError:
        print(f"blockbed io: Invalid cache option: {cache}", file=sys.stderr)
        return 1
    session = IoSession()
    try:
        apply(a)
        # the command line's image: as qemu-io, with BDRV_O_UNMAP (discard=unmap) unless -d
        p = OpenParams(a.filename, {"driver": a.f} if a.f else {}, read_only=a.r,
                       cache=cache, discard=parse_discard(a.d) if a.d else "unmap",
                       force_share=a.U, snapshot=a.s, copy_on_read=a.C,
                       aio=parse_aio(a.i) if a.i else ("native" if a.k else "threads"),
                       image_opts=bool(getattr(a, "image_opts", False)))
        if a.filename is None:          # no image: the commands may ``open`` one
            raise _NoImage
        check_aio(p)
        session.open(p)
    except _NoImage:
        pass
    except (BlockError, ValueError, OpenFailed) as e:
        msg = str(e) if isinstance(e, OpenFailed) else \
            f"qemu-io: can't open device {a.filename}: {e}"
        print(msg, file=sys.stderr)
        return 1
    status = 0
    try:
        if a.c:
            for line in a.c:
                if line.strip() in ("quit", "q"):
                    break
                status |= run_line(session, line)
                sys.stdout.flush()
        else:
            while True:
                # qemu-io 7.2 prints the prompt on stdout even when stdin is not a tty.
                print("qemu-io> ", end="", flush=True)
                line = sys.stdin.readline()
                if not line or line.strip() in ("quit", "q"):
                    break
                status |= run_line(session, line)
    finally:
        session.close()
    return status


def register(sub: argparse._SubParsersAction) -> None:
    from .imageopts import add_arguments
    p = sub.add_parser("io", help="qemu-io's commands on an image (read, write, readv, writev, aio_*, discard, flush, truncate, length, map, alloc, info, open, close, reopen)")
    p.add_argument("-f", metavar="FMT", help="format of the image (probed if omitted)")
    p.add_argument("-c", action="append", metavar="CMD",
                   help="run CMD (repeatable, in order); without -c commands come from stdin")
    p.add_argument("-r", action="store_true", help="open the image read-only")
    p.add_argument("-n", action="store_true", help="cache=none (as qemu-io -n)")
    p.add_argument("-t", metavar="CACHE", help="cache mode (default writeback)")
    p.add_argument("-U", action="store_true", help="open without locking out other users "
                                                   "of the image (qemu-io -U)")
    p.add_argument("-s", action="store_true",
                   help="snapshot: writes go to a temporary overlay, dropped at exit")
    p.add_argument("-C", action="store_true", help="copy-on-read from the backing chain")
    p.add_argument("-d", metavar="MODE", help="discard mode: ignore/off or unmap/on "
                                              "(default unmap, as qemu-io)")
    p.add_argument("-i", metavar="MODE", help="aio mode (threads, native; native needs -n)")
    p.add_argument("-k", action="store_true", help="aio=native (as -i native)")
    p.add_argument("filename", nargs="?", help="the image (none: start with nothing open)")
    add_arguments(p, image_opts=True)
    p.set_defaults(func=cmd_io, parser=p)
