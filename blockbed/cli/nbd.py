"""``blockbed nbd``: the qemu-nbd role (issue #15) — serve an image over NBD.

    blockbed nbd [-f FMT] [-r] [-x NAME] [-D TEXT] [-k SOCKET | -p PORT -b ADDR]
                 [-t] [-e N] [-A] [-B BITMAP]... [--cache MODE | -n] [--discard MODE]
                 [--detect-zeroes MODE] [--fork] [--pid-file PATH]
                 [--image-opts] [--object secret,...] IMAGE

Options and defaults are qemu-nbd 7.2's, except that without ``-k`` the TCP
listener binds 127.0.0.1 (qemu-nbd: 0.0.0.0) on port 10809.  The server
exits after the last client disconnects unless ``-t``.  See docs/nbd.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from ..block.driver import BlockError


def _err(msg: str) -> int:
    print(f"blockbed nbd: {msg}", file=sys.stderr)
    return 1


def cmd_nbd(a: argparse.Namespace) -> int:
    from ..block.backend import BlockBackend
    from ..block.cachemode import CacheMode
    from ..nbd.export import Export
    from ..nbd.server import NbdServer, listen_tcp, listen_unix
    from .img import open_img
    from .imageopts import apply
    cache = a.cache or ("none" if a.nocache else "writeback")
    try:
        CacheMode.parse(cache)
    except ValueError:
        return _err(f"Invalid cache mode '{cache}'")
    if a.shared < 1:
        return _err(f"Invalid shared device number '{a.shared}'")
    if a.socket and (a.port is not None or a.bind is not None):
        return _err("-p and -b are not allowed with -k")
    try:
        apply(a)
        node, _ = open_img(a.filename, a.f, read_only=a.read_only, cache=cache)
    except (BlockError, ValueError) as e:
        return _err(f"Failed to blk_new_open '{a.filename}': {e}")
    try:
        blk = BlockBackend(node, cache, discard=a.discard, detect_zeroes=a.detect_zeroes,
                           read_only=a.read_only)
    except ValueError as e:
        node.close()
        return _err(str(e))
    try:
        export = Export(blk, name=a.export_name, description=a.description or "",
                        read_only=a.read_only, shared=a.shared, bitmaps=a.bitmap,
                        allocation_depth=a.allocation_depth)
    except BlockError as e:
        blk.close()
        return _err(str(e))
    try:
        listener = listen_unix(a.socket) if a.socket else \
            listen_tcp(a.bind or "127.0.0.1", 10809 if a.port is None else a.port)
    except OSError as e:
        blk.close()
        where = a.socket or f"{a.bind or '127.0.0.1'}:{10809 if a.port is None else a.port}"
        return _err(f"Failed to bind socket to {where}: {e.strerror or e}")
    if a.fork:
        # the parent returns once the socket listens, as qemu-nbd --fork does
        if os.fork():
            os._exit(0)
        os.setsid()
        # like qemu-nbd, the background server lets go of the caller's terminal/pipes
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    if a.pid_file:
        with open(a.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    server = NbdServer(listener, {export.name: export}, shared=a.shared,
                       persistent=a.persistent)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: server.stop.set())
    try:
        server.serve()
    finally:
        listener.close()
        if a.socket:
            try:
                os.unlink(a.socket)
            except OSError:
                pass
        if a.pid_file:
            try:
                os.unlink(a.pid_file)
            except OSError:
                pass
        rc = blk.close()
    return 1 if rc else 0


def register(sub: argparse._SubParsersAction) -> None:
    from .imageopts import add_arguments
    p = sub.add_parser("nbd", help="serve an image over NBD (qemu-nbd's role)",
                       description="Serve IMAGE over NBD (fixed newstyle handshake, structured "
                                   "replies, base:allocation and qemu:dirty-bitmap contexts), "
                                   "as qemu-nbd 7.2.")
    p.add_argument("-f", "--format", dest="f", help="image format (raw, qcow2); probed if absent")
    p.add_argument("-r", "--read-only", action="store_true", help="export read-only")
    p.add_argument("-x", "--export-name", default="", help="export name (default: empty)")
    p.add_argument("-D", "--description", help="export description")
    p.add_argument("-k", "--socket", help="listen on this Unix socket")
    p.add_argument("-p", "--port", type=int, help="TCP port (default 10809)")
    p.add_argument("-b", "--bind", help="TCP address (default 127.0.0.1)")
    p.add_argument("-t", "--persistent", action="store_true",
                   help="don't exit when the last client disconnects")
    p.add_argument("-e", "--shared", type=int, default=1,
                   help="clients served at once (default 1)")
    p.add_argument("-B", "--bitmap", action="append", default=[],
                   help="expose a persistent dirty bitmap as qemu:dirty-bitmap:NAME")
    p.add_argument("-A", "--allocation-depth", action="store_true",
                   help="expose the allocation depth as qemu:allocation-depth")
    p.add_argument("--cache", help="cache mode: none, writeback (default), writethrough, "
                                   "directsync, unsafe")
    p.add_argument("-n", "--nocache", action="store_true", help="--cache=none")
    p.add_argument("--discard", default="ignore", choices=("ignore", "unmap"),
                   help="pass trims down (unmap) or drop them (ignore, default)")
    p.add_argument("--detect-zeroes", default="off", choices=("off", "on", "unmap"),
                   help="turn all-zero writes into write-zeroes requests (unmap: which may "
                        "unmap with --discard unmap)")
    p.add_argument("--fork", action="store_true",
                   help="return once the server listens; it keeps running in the background")
    p.add_argument("--pid-file", help="write the server's process id here")
    p.add_argument("-v", "--verbose", action="store_true", help="accepted, no effect")
    p.add_argument("filename", metavar="IMAGE", help="the image to export")
    add_arguments(p, image_opts=True)
    p.set_defaults(func=cmd_nbd, parser=p)
