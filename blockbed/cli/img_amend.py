"""``blockbed img amend``: qemu-img 7.2's ``amend`` subcommand.

    amend [--object ...] [--image-opts] [-p] [-q] [-f FMT] [-t CACHE] [--force]
          -o OPTIONS FILENAME

Change options of an existing qcow2 image: ``compat`` (0.10/v2 or 1.1/v3, either
way), ``refcount_bits``, ``lazy_refcounts``, ``size``, ``data_file`` and
``data_file_raw`` (images with an external data file).  ``-o help`` lists them.
The work is done by :mod:`blockbed.block.qcow2.amend`.
"""

from __future__ import annotations

import argparse
import sys

from ..block.driver import BlockError


def register(s: argparse._SubParsersAction, guard) -> None:
    from .imageopts import add_arguments as add_image_arguments
    m = s.add_parser("amend", help="change options of an existing image",
                     description="Change compat, refcount_bits, lazy_refcounts, size or the "
                                 "data file name of a qcow2 image in place.")
    m.add_argument("-f", metavar="FMT", help="format of the image (probed if omitted)")
    m.add_argument("-o", action="append", metavar="OPTIONS",
                   help="options to change, key=value[,key=value...]; 'help' lists them")
    m.add_argument("-p", action="store_true", help="show progress")
    m.add_argument("-q", action="store_true", help="quiet")
    m.add_argument("-t", metavar="CACHE", help="cache mode of the image (default writeback)")
    m.add_argument("--force", action="store_true",
                   help="allow changes qemu-img would ask to confirm (accepted; none need it)")
    m.add_argument("filenames", nargs="*", metavar="FILENAME", help="the image to amend")
    add_image_arguments(m, image_opts=True)
    m.set_defaults(func=guard(cmd_amend))


def _err(msg: str, usage: bool = False) -> int:
    print(f"blockbed img: {msg}", file=sys.stderr)
    if usage:
        print("Try 'blockbed img --help' for more information", file=sys.stderr)
    return 1


def _print_help() -> int:
    from ..block.qcow2.amend import AMEND_OPTIONS
    print("Amend options for 'qcow2':")
    for name, kind, text in AMEND_OPTIONS:
        left = f"  {name}=<{kind}>"
        print(f"{left:<24} - {text}" if len(left) < 24 else f"{left} - {text}")
    return 0


def cmd_amend(a: argparse.Namespace) -> int:
    from ..block.qcow2.amend import AmendError, parse_plan
    from .img import open_img, _open_msg, _parse_o
    from .img_rebase import Progress, _check_cache
    if not a.o:
        return _err("Must specify options (-o)", usage=True)
    if any(part == "help" for o in a.o for part in o.split(",")):
        return _print_help()
    if len(a.filenames) != 1:
        return _err("Expecting one image file name", usage=True)
    filename = a.filenames[0]
    msg = _check_cache(a.t)
    if msg:
        return _err(msg)
    if getattr(a, "image_opts", False):
        from .imageopts import _specs, parse
        _specs.setdefault(filename, parse(filename))
    opts = _parse_o(a.o)
    try:
        node, fmt = open_img(filename, a.f, read_only=False)
    except BlockError as e:
        return _err(_open_msg(filename, e))
    try:
        if fmt != "qcow2":
            return _err(f"Format driver '{fmt}' does not support option amendment")
        try:
            plan = parse_plan(opts)
        except AmendError as e:
            return _err(str(e) + (f"\n{e.hint}" if e.hint else ""))
        bar = Progress(a.p and not a.q, min_skip=1.0)
        try:
            from ..block.qcow2.amend import amend
            amend(node, plan, bar.set)
        except AmendError as e:
            return _err(str(e) + (f"\n{e.hint}" if e.hint else ""))
        if a.p and not a.q:
            bar.end()
    finally:
        node.close()
    return 0
