"""``blockbed logwrites``: read the write logs of :mod:`blockbed.block.logwrites`.

``blockbed logwrites dump LOG`` prints one line per entry::

    seq     kind          offset      length  flags  detail

followed by a summary line.  ``--data N`` adds the first N payload bytes of
each write in hex.  ``blockbed logwrites replay LOG IMAGE`` applies the
logged writes to a raw image (``--until SEQ`` or ``--mark NAME`` to stop
early), which rebuilds the host-level state at any point of the log.

Exit status: 0 on success, 1 if the log is unreadable or corrupt (one line
on stderr naming the problem), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from ..block.driver import BlockError
from ..block.logwrites import Kind, LogFormatError, LogReader, replay


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("logwrites", help="inspect or replay a log-writes file",
                       description="Inspect or replay a write log recorded by the logwrites "
                                   "filter (format: docs/block-layer.md).")
    lsub = p.add_subparsers(dest="logwrites_command", required=True, metavar="ACTION")
    d = lsub.add_parser("dump", help="print every entry of a log")
    d.add_argument("log", metavar="LOG", help="the log-writes file")
    d.add_argument("--data", type=int, default=0, metavar="N",
                   help="show the first N bytes of each write payload in hex")
    d.set_defaults(func=dump_main)
    r = lsub.add_parser("replay", help="apply the logged writes to a raw image")
    r.add_argument("log", metavar="LOG", help="the log-writes file")
    r.add_argument("image", metavar="IMAGE", help="the raw image the writes are applied to")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--until", type=int, metavar="SEQ", help="stop after entry SEQ")
    g.add_argument("--mark", metavar="NAME", help="stop at the first mark NAME")
    r.set_defaults(func=replay_main)


def format_entry(e, data_bytes: int = 0) -> str:
    flags = ",".join(n for n, bit in (("fua", 1), ("may_unmap", 2)) if e.flags & bit) or "-"
    kind = e.kind.name.lower()
    detail = ""
    if e.kind is Kind.MARK:
        detail = repr(e.name)
    elif e.kind is Kind.WRITE and data_bytes and e.data is not None:
        detail = e.data[:data_bytes].hex()
    return f"{e.seq:>7} {kind:<13} {e.offset:>12} {e.length:>10}  {flags:<9} {detail}".rstrip()


def dump_main(args: argparse.Namespace) -> int:
    counts = {k: 0 for k in Kind}
    written = 0
    try:
        with LogReader(args.log, load_data=bool(args.data)) as reader:
            h = reader.header
            print(f"# blockbed log-writes v{h.version}, sector size {h.sector_size}")
            print(f"{'seq':>7} {'kind':<13} {'offset':>12} {'length':>10}  {'flags':<9} detail")
            for e in reader:
                counts[e.kind] += 1
                if e.kind is Kind.WRITE:
                    written += e.length
                print(format_entry(e, args.data))
            truncated = reader.truncated
    except LogFormatError as e:
        print(f"blockbed logwrites: {e}", file=sys.stderr)
        return 1
    total = sum(counts.values())
    print(f"# {total} entries: {counts[Kind.WRITE]} writes ({written} bytes), "
          f"{counts[Kind.FLUSH]} flushes, {counts[Kind.DISCARD]} discards, "
          f"{counts[Kind.WRITE_ZEROES]} write-zeroes, {counts[Kind.MARK]} marks"
          + ("; the log ends in a torn entry" if truncated else ""))
    return 0


def replay_main(args: argparse.Namespace) -> int:
    from ..block.registry import open_image
    try:
        with LogReader(args.log) as reader:
            entries = list(reader)
        until = args.until
        if args.mark is not None:
            marks = [e.seq for e in entries if e.kind is Kind.MARK and e.name == args.mark]
            if not marks:
                print(f"blockbed logwrites: no mark named {args.mark!r} in {args.log}",
                      file=sys.stderr)
                return 1
            until = marks[0]
        with open_image(args.image, "raw") as node:
            n = replay(entries, node, until)
            node.flush()
    except (LogFormatError, BlockError) as e:
        print(f"blockbed logwrites: {e}", file=sys.stderr)
        return 1
    print(f"replayed {n} entries into {args.image}")
    return 0
