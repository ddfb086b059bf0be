"""``blockbed img rebase``: qemu-img 7.2's ``rebase`` subcommand.

    rebase [-f FMT] [-t CACHE] [-T SRC_CACHE] [-p] [-q] [-u] [-U] [--object ...]
           [--image-opts] -b BACKING_FILE [-F BACKING_FMT] FILENAME

*Safe mode* (the default) keeps what the guest sees: every range the image does
not allocate itself reads through the old backing chain now and would read
through the new one afterwards; where the two differ, the old content is
written into the image first (QEMU compares 512-byte sectors and writes only the
differing runs), then the header names the new backing file.  ``-b ""`` removes
the backing file, so everything the old chain supplied is copied in.

*Unsafe mode* (``-u``) only rewrites the header: for renaming or moving a
backing file whose contents are unchanged.

As in qemu-img 7.2 a new backing file needs a format (``-F``); when it is
missing the copying has already been done when the header update is refused
(the image still reads the same, through the old backing file).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..block.driver import BlockDriver, BlockError

IO_BUF = 2 << 20              # qemu-img's IO_BUF_SIZE
SECTOR = 512


def register(s: argparse._SubParsersAction, guard) -> None:
    from .imageopts import add_arguments as add_image_arguments
    r = s.add_parser("rebase", help="change the backing file of an image",
                     description="Point an image at another backing file; safe mode copies "
                                 "what would change, -u only rewrites the header.")
    r.add_argument("-f", metavar="FMT", help="format of the image (probed if omitted)")
    r.add_argument("-b", metavar="BACKING_FILE",
                   help="the new backing file (relative to the image's directory); '' for none")
    r.add_argument("-F", metavar="BACKING_FMT", help="format of the new backing file")
    r.add_argument("-u", action="store_true", help="unsafe: change the header only, copy nothing")
    r.add_argument("-p", action="store_true", help="show progress")
    r.add_argument("-q", action="store_true", help="quiet: no progress")
    r.add_argument("-t", metavar="CACHE", help="cache mode of the image (default writeback)")
    r.add_argument("-T", metavar="SRC_CACHE", help="cache mode of the backing files")
    r.add_argument("-U", "--force-share", dest="U", action="store_true",
                   help="open the backing files even if another process holds them")
    r.add_argument("filenames", nargs="*", metavar="FILENAME", help="the image to rebase")
    add_image_arguments(r, image_opts=True)
    r.set_defaults(func=guard(cmd_rebase))


def _err(msg: str, usage: bool = False) -> int:
    print(f"blockbed img: {msg}", file=sys.stderr)
    if usage:
        print("Try 'blockbed img --help' for more information", file=sys.stderr)
    return 1


def _check_cache(name: str | None) -> str | None:
    """None when valid; qemu-img's message otherwise."""
    if name is None:
        return None
    from ..block.cachemode import CacheMode
    try:
        CacheMode.parse(name)
    except ValueError:
        return f"Invalid cache option: {name}"
    return None


def cmd_rebase(a: argparse.Namespace) -> int:
    from .img import open_img, _open_msg
    if len(a.filenames) != 1:
        return _err("Expecting one image file name", usage=True)
    filename = a.filenames[0]
    for c in (a.t, a.T):
        msg = _check_cache(c)
        if msg:
            return _err(msg)
    if a.b is None and not a.u:
        return _err("Must specify backing file (-b) or use unsafe mode (-u)", usage=True)
    if getattr(a, "image_opts", False):
        from .imageopts import _specs, parse
        _specs.setdefault(filename, parse(filename))
    new_name = a.b or ""
    progress = a.p and not a.q
    try:
        node, _fmt = open_img(filename, a.f, read_only=False,
                              extra={"backing": None} if a.u else None)
    except BlockError as e:
        return _err(_open_msg(filename, e))
    try:
        if not a.u:
            new_backing = None
            if new_name:
                path = _relative_to(node, new_name)
                try:
                    new_backing, _ = open_img(path, a.F, read_only=True, force_share=a.U)
                except BlockError as e:
                    return _err(f"Could not open new backing file '{new_name}': {e}")
            try:
                copy_differences(node, getattr(node, "backing", None), new_backing, progress)
            finally:
                if new_backing is not None:
                    new_backing.close()
        else:
            bar = Progress(progress)
            bar.add(0)
            bar.set(100.0)
            bar.end()
        change = getattr(node, "change_backing_file", None)
        if change is None:
            return _err(f"Could not change the backing file to '{new_name}': "
                        "Operation not supported")
        if new_name and not a.F:
            return _err(f"Could not change the backing file to '{new_name}': "
                        "backing format must be specified")
        change(new_name or None, a.F if new_name else None)
        node.flush()
    finally:
        node.close()
    return 0


def _relative_to(node: BlockDriver, name: str) -> str:
    """A backing file name as the image will resolve it: relative to its directory."""
    rel = getattr(node, "relative_path", None)
    if rel is not None:
        return rel(name)
    path = getattr(node, "filename", "") or ""
    return name if os.path.isabs(name) or not path else os.path.join(os.path.dirname(path), name)


def _read_clamped(node: BlockDriver | None, offset: int, buf: memoryview) -> None:
    """Read ``len(buf)`` bytes at ``offset``; what lies past the node's end (or with no
    node at all) reads as zeros, as a backing file shorter than the image does."""
    n = len(buf)
    have = 0 if node is None else max(0, min(n, node.length() - offset))
    if have:
        node.read(offset, buf[:have])
    if have < n:
        buf[have:] = bytes(n - have)


class Progress:
    """qemu-img's progress line (util/qemu-progress.c): ``    (P/100%)\r``, printed when
    the value moved by more than ``min_skip`` points since the last print, or is 0 or
    100; a newline at the end."""

    def __init__(self, enabled: bool, min_skip: float = 2.0):
        self.enabled, self.min_skip = enabled, min_skip
        self.current = self.last = 0.0

    def add(self, delta: float, of: int = 100) -> None:
        self.set(self.current + delta / 100 * of)

    def set(self, value: float) -> None:
        self.current = min(value, 100.0)
        c = self.current
        if c > self.last + self.min_skip or c < self.last - self.min_skip or c in (0, 100):
            self.last = c
            if self.enabled:
                sys.stdout.write(f"    ({c:0.2f}/100%)\r")
                sys.stdout.flush()

    def end(self) -> None:
        if self.enabled:
            sys.stdout.write("\n")


def copy_differences(top: BlockDriver, old: BlockDriver | None, new: BlockDriver | None,
                     progress: bool = False) -> int:
    """Write into ``top`` every sector it does not allocate whose content through
    ``old`` differs from ``new``; returns the bytes written."""
    size = top.length()
    old_buf, new_buf = bytearray(IO_BUF), bytearray(IO_BUF)
    ov, nv = memoryview(old_buf), memoryview(new_buf)
    bar = Progress(progress)
    bar.add(0)
    # one step per 2 MiB window examined, as qemu-img counts them
    step = 100.0 / (size // min(size, IO_BUF)) if size else 100.0
    written = 0
    offset = 0
    while offset < size:
        n = min(IO_BUF, size - offset)
        ext = top.block_status(offset, n)[0]
        n = min(n, ext.length)
        if ext.allocated:
            offset += n
            continue
        _read_clamped(old, offset, ov[:n])
        _read_clamped(new, offset, nv[:n])
        if ov[:n] != nv[:n]:
            for start, length in _differing_runs(ov[:n], nv[:n]):
                top.write(offset + start, ov[start:start + length])
                written += length
        offset += n
        bar.add(step)
    bar.set(100.0)
    bar.end()
    return written


def _differing_runs(a: memoryview, b: memoryview) -> list[tuple[int, int]]:
    """(start, length) runs of 512-byte sectors that differ (QEMU compare_buffers)."""
    runs: list[tuple[int, int]] = []
    n = len(a)
    pos = 0
    step = 64 * SECTOR              # skip equal 32 KiB stretches in one compare
    while pos < n:
        end = min(n, pos + step)
        if a[pos:end] == b[pos:end]:
            pos = end
            continue
        for s in range(pos, end, SECTOR):
            e = min(end, s + SECTOR)
            if a[s:e] != b[s:e]:
                if runs and runs[-1][0] + runs[-1][1] == s:
                    runs[-1] = (runs[-1][0], e - runs[-1][0])
                else:
                    runs.append((s, e - s))
        pos = end
    return runs
