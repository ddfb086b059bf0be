"""``blockbed trace FILE``: read a trace written by ``blockbed run --trace FILE``.

Without options: a summary (requests per controller, guest exits per request,
latency per layer, host system calls per guest request).  ``--request N``,
``--first-write``, ``--first-flush``: the life of one request as an indented
tree, from the guest's exits down to the system calls and back up to the
completion and the interrupt.  ``--timeline out.svg|png``: a drawing (needs the
optional extra ``blockbed[pictures]``).  Exit status 1 when the trace holds no
such request, 2 for an unreadable trace or bad arguments.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="summarise a trace or show the life of one request",
                       description=__doc__.splitlines()[0])
    p.add_argument("file", metavar="FILE", help="JSON-lines trace from 'blockbed run --trace'")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--request", type=int, metavar="N", help="the life of request N")
    g.add_argument("--first-write", action="store_true", help="the life of the first write")
    g.add_argument("--first-flush", action="store_true", help="the life of the first flush")
    p.add_argument("--timeline", metavar="OUT", help="draw a timeline into OUT (.svg or .png)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..tracereader import TraceError, load
    from ..traceview import life, summary
    try:
        tr = load(args.file)
    except TraceError as exc:
        print(f"blockbed trace: {exc}", file=sys.stderr)
        return 2
    if args.timeline:
        rc = draw_timeline(tr, args.timeline)
        if rc:
            return rc
    if args.request is not None or args.first_write or args.first_flush:
        if args.request is not None:
            r, what = tr.requests.get(args.request), f"request {args.request}"
        else:
            op = "write" if args.first_write else "flush"
            r, what = tr.first(op), f"{op} request"
        if r is None:
            print(f"blockbed trace: {args.file}: no {what} in the trace", file=sys.stderr)
            return 1
        print(life(tr, r))
    elif not args.timeline:
        print(summary(tr))
    return 0


def draw_timeline(tr, out: str) -> int:
    from ..pictures import PicturesUnavailable
    from ..tracetimeline import draw
    try:
        draw(tr, out)
    except (PicturesUnavailable, ValueError) as exc:
        print(f"blockbed trace: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"blockbed trace: {out}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"timeline written to {out}", file=sys.stderr)
    return 0
