"""``blockbed img measure``: qemu-img 7.2's ``measure`` subcommand.

    measure [--output=human|json] [-O FMT] [-o OPTIONS] [--object ...] [-U]
            (--size N | [-f FMT] [--image-opts] [-l SNAPSHOT] FILENAME)

How big a file an image of format FMT needs: ``required`` for the data the
source holds (or for an empty image of ``--size``), ``fully-allocated`` when every
guest cluster has a host cluster; for a qcow2 v3 target measured from a qcow2
source also the space its persistent bitmaps take.  The numbers are QEMU's
(block/qcow2.c qcow2_measure, block/raw-format.c raw_measure), so a script that
preallocates an LV or a thin volume for ``qemu-img convert`` gets the same size.

The qcow2 arithmetic lives in :mod:`blockbed.block.qcow2.measure`; this module is
the command line: its options, checks, messages and output.
"""

from __future__ import annotations

import argparse
import sys

from ..block.driver import BlockError


def register(s: argparse._SubParsersAction, guard) -> None:
    from .imageopts import add_arguments as add_image_arguments
    m = s.add_parser("measure", help="calculate the file size an image of a format needs",
                     description="Print the file size a new image needs: 'required' for the "
                                 "source's data, 'fully allocated' with every cluster allocated.")
    m.add_argument("-f", metavar="FMT", help="format of the source image (probed if omitted)")
    m.add_argument("-O", metavar="OUTPUT_FMT", default="raw",
                   help="format to measure for (raw or qcow2; default raw)")
    m.add_argument("-o", action="append", metavar="OPTIONS",
                   help="creation options of the output format, as for create")
    m.add_argument("-l", metavar="SNAPSHOT", help="measure this internal snapshot of the source")
    m.add_argument("--size", metavar="N", help="measure an empty image of N bytes (k/M/G/T suffixes)")
    m.add_argument("--output", default="human", metavar="FORMAT",
                   help="human (default) or json")
    m.add_argument("-U", "--force-share", dest="U", action="store_true",
                   help="open the source even if another process holds it")
    m.add_argument("filenames", nargs="*", metavar="FILENAME", help="source image")
    add_image_arguments(m, image_opts=True)
    m.set_defaults(func=guard(cmd_measure))


def _err(msg: str) -> int:
    print(f"blockbed img: {msg}", file=sys.stderr)
    return 1


def cmd_measure(a: argparse.Namespace) -> int:
    from ..block.qcow2 import measure as qm
    from .img import open_img, qemu_json, _open_msg, _parse_o
    from .img_bitmap import _cvtnum

    if a.output not in ("human", "json"):
        return _err("--output must be used with human or json as argument.")
    if len(a.filenames) > 1:
        return _err("At most one filename argument is allowed.")
    filename = a.filenames[0] if a.filenames else None
    if filename is not None and a.size is not None:
        return _err("--size N cannot be used together with a filename.")
    if filename is None and a.size is None:
        return _err("Either --size N or one filename must be specified.")
    if filename is not None and getattr(a, "image_opts", False):
        from .imageopts import parse
        from .imageopts import _specs       # apply() ran before us (the guard)
        _specs.setdefault(filename, parse(filename))
    size = None
    if a.size is not None:
        size = _cvtnum("image size", a.size)
        if size is None:
            return 1
    opts = _parse_o(a.o)
    out_fmt = a.O
    if out_fmt not in ("raw", "qcow2"):
        from ..block import registry
        if out_fmt in registry.available_formats() or out_fmt in qm.KNOWN_FORMATS:
            return _err(f"Block driver '{out_fmt}' does not support size measurement")
        return _err(f"Unknown file format '{out_fmt}'")

    node = None
    try:
        if filename is not None:
            try:
                node, src_fmt = open_img(filename, a.f, read_only=True, force_share=a.U)
            except BlockError as e:
                return _err(_open_msg(filename, e))
            if a.l is not None:
                snaps = getattr(node, "snapshots", None) or []
                if not any(s.name == a.l or s.id_str == a.l for s in snaps):
                    return _err("Failed to load snapshot: Can't find snapshot")
                return _err(f"measure -l: measuring an internal snapshot is not supported; "
                            f"convert it out first (img convert -l {a.l})")
        try:
            if out_fmt == "qcow2":
                info = qm.measure_qcow2(opts, size, node)
            else:
                info = qm.measure_raw(opts, size, node)
        except qm.MeasureOptionError as e:
            print(f"blockbed img: {e}\nblockbed img: Invalid options for file format "
                  f"'{out_fmt}'", file=sys.stderr)
            return 1
    finally:
        if node is not None:
            node.close()

    if a.output == "json":
        d = {"required": info.required, "fully-allocated": info.fully_allocated}
        if info.bitmaps is not None:
            d["bitmaps"] = info.bitmaps
        print(qemu_json(d))
    else:
        print(f"required size: {info.required}")
        print(f"fully allocated size: {info.fully_allocated}")
        if info.bitmaps is not None:
            print(f"bitmaps size: {info.bitmaps}")
    return 0

