"""``blockbed img dd``: qemu-img 7.2's ``dd`` subcommand.

    dd [--image-opts] [-U] [-f FMT] [-O OUTPUT_FMT] [bs=BLOCK_SIZE] [count=BLOCKS]
       [skip=BLOCKS] if=INPUT of=OUTPUT

Copy a guest-visible byte range of INPUT into a *new* image OUTPUT (raw by default)
whose size is the range's: skip ``skip`` blocks of ``bs`` bytes (default 512), then
copy at most ``count`` blocks.  Every block is written, zeros included, as
qemu-img does (its output is fully allocated).

One deliberate difference from qemu-img 7.2: it applies ``count`` before ``skip``
(``bs=1M skip=1 count=6`` of a 10 MiB disk gives 5 MiB; a skip past the counted
size reports "cannot skip to specified offset" yet exits 0 with an empty output).
blockbed follows dd(1) and the qemu-img manual: skip first, then count (6 MiB),
and a skip past the end of the input is an error with status 1 and no output file.
"""

from __future__ import annotations

import argparse
import sys

from ..block.driver import BlockError

CHUNK = 1 << 20
_MAX_BS = 2147483647


def register(s: argparse._SubParsersAction, guard) -> None:
    d = s.add_parser("dd", help="copy a byte range of an image into a new image, dd-style",
                     description="Copy [skip*bs, skip*bs + count*bs) of INPUT into a new image.")
    d.add_argument("-f", metavar="FMT", help="format of the input (probed if omitted)")
    d.add_argument("-O", metavar="OUTPUT_FMT", default="raw", help="format of the output "
                                                                  "(raw or qcow2; default raw)")
    d.add_argument("-U", "--force-share", dest="U", action="store_true",
                   help="open the input even if another process holds it")
    d.add_argument("--image-opts", action="store_true",
                   help="if= is an option string (driver=qcow2,file.filename=PATH)")
    d.add_argument("--object", action="append", default=[], metavar="OBJECTDEF",
                   help="secret,id=ID,data=PASS|file=PATH (for encrypted inputs)")
    d.add_argument("operands", nargs="*", metavar="OPERAND",
                   help="bs=BLOCK_SIZE, count=BLOCKS, skip=BLOCKS, if=INPUT, of=OUTPUT")
    d.set_defaults(func=guard(cmd_dd))


def _err(msg: str) -> int:
    print(f"blockbed img: {msg}", file=sys.stderr)
    return 1


def cmd_dd(a: argparse.Namespace) -> int:
    from ..block import registry
    from .img import open_img, _open_msg
    from .img_bitmap import _cvtnum
    ops: dict[str, str] = {}
    for op in a.operands:
        key, sep, value = op.partition("=")
        if not sep or key not in ("bs", "count", "skip", "if", "of"):
            return _err(f"unrecognized operand {key}")
        ops[key] = value                    # the last one given counts, as in qemu-img
    bs = 512
    if "bs" in ops:
        v = _cvtnum("bs", ops["bs"])
        if v is None:
            return 1
        if not 1 <= v <= _MAX_BS:
            return _err(f"Invalid bs specified. Must be between 1 and {_MAX_BS}.")
        bs = v
    counts = {}
    for key in ("count", "skip"):
        if key in ops:
            v = _cvtnum(key, ops[key])
            if v is None:
                return 1
            counts[key] = v
    if not ops.get("if") or not ops.get("of"):
        return _err("Must specify both input and output files")
    out_fmt = a.O
    if out_fmt not in registry.available_formats():
        return _err("Unknown file format")
    src_name, dst = ops["if"], ops["of"]
    if a.image_opts:
        from .imageopts import _specs, parse
        _specs.setdefault(src_name, parse(src_name))
    try:
        src, _ = open_img(src_name, a.f, read_only=True, force_share=a.U)
    except BlockError as e:
        return _err(_open_msg(src_name, e))
    try:
        length = src.length()
        start = counts.get("skip", 0) * bs
        if start > length:
            return _err(f"{src_name}: cannot skip to specified offset")
        size = length - start
        if "count" in counts:
            size = min(size, counts["count"] * bs)
        try:
            registry.create_image(dst, out_fmt, size, {})
        except BlockError as e:
            return _err(f"{dst}: error while creating output image: {e}")
        try:
            out, _ = open_img(dst, out_fmt, read_only=False)
        except BlockError as e:
            return _err(f"{dst}: error while creating output image: {e}")
        try:
            _copy(src, out, start, size)
            out.flush()
        finally:
            out.close()
    finally:
        src.close()
    return 0


def _copy(src, out, start: int, size: int) -> None:
    """Copy ``size`` bytes from ``src`` at ``start`` to ``out`` at 0, every byte written."""
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    pos = 0
    while pos < size:
        n = min(CHUNK, size - pos)
        src.read(start + pos, mv[:n])
        out.write(pos, mv[:n])
        pos += n

