"""``blockbed img bitmap``: qemu-img 7.2's ``bitmap`` subcommand.

    bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
           [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [--object ...] [-f FMT]
           FILE BITMAP

The actions run in the order given on one image opened read-write without its
backing chain; the first failing action stops the list, and what the earlier
ones did is still stored when the image is closed (as qemu-img does).  Error
texts are qemu-img's ("Operation add on bitmap b0 failed: Bitmap already
exists: b0").
"""

from __future__ import annotations

import argparse
import re
import sys

from ..block.driver import BlockDriver
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..block.qcow2.bitmaps import BitmapStore

# qcow2.bitmaps (and the qcow2 driver behind it) is imported by the functions that
# use it: `img` builds its whole parser, bitmap's included, for every subcommand.

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([bkmgtpe]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "p": 1 << 50, "e": 1 << 60}


class _Act(argparse.Action):
    """Append (action, argument) to ``actions`` keeping the command line's order."""

    def __call__(self, parser, ns, values, option_string=None):
        acts = getattr(ns, "actions", None) or []
        acts.append((self.const, values))
        ns.actions = acts


def _cvtnum(name: str, text: str) -> int | None:
    """qemu-img's cvtnum: a size with an optional k/M/G/T/P/E suffix."""
    m = _SIZE.match(text)
    if m:
        val = float(m.group(1)) * _UNITS[m.group(2).lower()] if "." in m.group(1) \
            else int(m.group(1)) * _UNITS[m.group(2).lower()]
        if val == int(val) and val < 1 << 63:
            return int(val)
    print(f"blockbed img: Invalid {name} specified. You may use k, M, G, T, P or E suffixes for\n"
          "blockbed img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
          file=sys.stderr)
    return None


def _default_granularity(node: BlockDriver) -> int:
    """QEMU bdrv_get_default_bitmap_granularity: the cluster size within [4 KiB, 64 KiB]."""
    return min(65536, max(4096, getattr(node, "cluster_size", 0) or 0))


def _store(node: BlockDriver) -> BitmapStore | None:
    from ..block.qcow2.bitmaps import BitmapStore
    bm = getattr(node, "bitmaps", None)
    return bm if isinstance(bm, BitmapStore) else None


def _err(msg: str) -> int:
    print(f"blockbed img: {msg}", file=sys.stderr)
    return 1


def _run(op: str, arg: str | None, node: BlockDriver, src: BlockDriver, name: str,
         granularity: int | None) -> None:
    """One action; BitmapError carries QEMU's message."""
    from ..block.qcow2.bitmaps import BitmapError, auto_node_name
    store, sstore = _store(node), _store(src)
    if op == "add":
        if not name:
            raise BitmapError("Bitmap name cannot be empty")
        if granularity is not None and (granularity < 512 or granularity & (granularity - 1)):
            raise BitmapError("Granularity must be power of 2 and at least 512")
        if store is None:
            raise BitmapError(f"Can't store persistent bitmaps to {auto_node_name()}: "
                              "Operation not supported")
        store.add(name, granularity if granularity is not None else _default_granularity(node))
        return
    if store is None:
        raise BitmapError(f"Dirty bitmap '{name}' not found")
    if op == "remove":
        store.remove(name)
    elif op == "clear":
        store.clear(name)
    elif op in ("enable", "disable"):
        store.set_enabled(name, op == "enable")
    else:                                   # merge
        if sstore is None:
            store.lookup(name)
            raise BitmapError(f"Dirty bitmap '{arg}' not found")
        store.merge(name, sstore, arg)


def cmd_bitmap(a: argparse.Namespace) -> int:
    from ..block.qcow2.bitmaps import BitmapError
    from .img import open_arg
    actions: list[tuple[str, str | None]] = getattr(a, "actions", None) or []
    if not actions:
        return _err("Need at least one of --add, --remove, --clear, --enable, --disable, "
                    "or --merge")
    granularity: int | None = None
    if a.g is not None:
        g = _cvtnum("granularity", a.g)
        if g is None:
            return 1
        # QEMU tests the 64-bit value for "given" and passes it on as a uint32
        granularity = (g & 0xFFFFFFFF) if g else None
    ops = {op for op, _ in actions}
    if a.g is not None and "add" not in ops:
        return _err("granularity only supported with --add")
    if a.F and not a.b:
        return _err("-F only supported with -b")
    if a.b and "merge" not in ops:
        return _err("Merge bitmap source file only supported with --merge")
    if len(a.args) != 2:
        return _err("Expecting filename and bitmap name")
    filename, name = a.args
    node, _ = open_arg(filename, a.f, read_only=False, no_backing=True)
    src = None
    try:
        if a.b:
            src, _ = open_arg(a.b, a.F, read_only=True, no_backing=True)
        for op, arg in actions:
            try:
                _run(op, arg, node, src or node, name, granularity)
            except BitmapError as e:
                print(f"blockbed img: Operation {op} on bitmap {name} failed: {e}", file=sys.stderr)
                if e.hint:
                    print(e.hint, file=sys.stderr)
                return 1
        return 0
    finally:
        if src is not None:
            src.close()
        node.close()


def register(s: argparse._SubParsersAction, guard) -> None:
    b = s.add_parser("bitmap", help="add, remove, clear, enable, disable or merge "
                                    "persistent bitmaps")
    for op, what in (("add", "create BITMAP (persistent, enabled)"), ("remove", "delete BITMAP"),
                     ("clear", "clear every bit of BITMAP"),
                     ("enable", "let BITMAP track writes again"),
                     ("disable", "stop BITMAP tracking writes")):
        b.add_argument(f"--{op}", nargs=0, action=_Act, const=op, help=what)
    b.add_argument("--merge", metavar="SOURCE", action=_Act, const="merge",
                   help="set in BITMAP every bit set in bitmap SOURCE")
    b.add_argument("-b", "--source-file", dest="b", metavar="SOURCE_FILE",
                   help="with --merge: the image holding SOURCE (default: FILE)")
    b.add_argument("-F", "--source-format", dest="F", metavar="SOURCE_FMT",
                   help="format of SOURCE_FILE")
    b.add_argument("-g", "--granularity", dest="g", metavar="GRANULARITY",
                   help="with --add: bytes per bit (power of two; default: the cluster size "
                        "within 4k..64k)")
    b.add_argument("--object", action="append", help="accepted and ignored (no objects "
                                                     "are needed by blockbed)")
    b.add_argument("-f", metavar="FMT", help="format of FILE (probed if omitted)")
    b.add_argument("args", nargs="*", metavar="FILE BITMAP", help="the image and the bitmap")
    b.set_defaults(func=guard(cmd_bitmap))


# --- img convert --bitmaps -----------------------------------------------------------------
def convert_bitmaps_refusal(src: BlockDriver, out_fmt: str, skip_broken: bool) -> str | None:
    """Why ``convert --bitmaps`` cannot run, checked before the target is created (QEMU
    qemu-img convert + convert_check_bitmaps), or None."""
    if out_fmt != "qcow2":
        return f"Format driver '{out_fmt}' does not support bitmaps"
    store = _store(src)
    if store is None:
        return "Source lacks bitmap support"
    if not skip_broken:
        for b in reversed(list(store)):        # QEMU's list order: the last loaded first
            if b.inconsistent:
                return (f"Cannot copy inconsistent bitmap '{b.name}'\n"
                        "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to "
                        "delete it")
    return None


def convert_copy_bitmaps(src: BlockDriver, dst: BlockDriver, warn) -> None:
    """Copy every persistent bitmap of ``src`` into ``dst`` after the data (QEMU
    convert_copy_bitmaps): same name, granularity and enabled state, the same bits.
    Inconsistent ones are skipped with a warning (the check ran before, so they are
    only there with --skip-broken-bitmaps).  Raises BitmapError with QEMU's text."""
    from ..block.qcow2.bitmaps import BitmapError
    sstore, dstore = _store(src), _store(dst)
    for b in reversed(list(sstore)):
        if b.inconsistent:
            warn(f"Skipping inconsistent bitmap '{b.name}'")
            continue
        try:
            dstore.add(b.name, b.granularity)
        except BitmapError as e:
            raise BitmapError(f"Failed to create bitmap {b.name}: {e}") from None
        if not b.enabled:
            dstore.set_enabled(b.name, False)
        dstore.merge(b.name, sstore, b.name)
