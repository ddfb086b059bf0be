"""``blockbed explain --drive SPEC``: the life of a write and of a flush, from real data.

Boots a short guest (disktest: fill, a few seeded operations, flush, verify)
on the drive, traces everything and prints the life of its first write and
of its first flush as ``blockbed trace --first-write/--first-flush`` would:
from the guest's exits through the controller, BlockBackend, the format and
the file driver to the host system calls, and back to the interrupt.  The
drive's image is written to: use a scratch image.
"""

from __future__ import annotations

import argparse
import json
import sys

from .demo import guest_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="trace a short guest and show the life of its first write and flush",
                       description=__doc__.splitlines()[0])
    p.add_argument("--drive", required=True, metavar="SPEC",
                   help="file=PATH,format=…,if=virtio|ahci|ide|lsi,cache=… (a scratch image)")
    p.add_argument("--guest", default="disktest", choices=("disktest",), help="the guest (default disktest)")
    p.add_argument("--guests", default=None, metavar="DIR", help="built guests (default guests/build)")
    p.add_argument("--ops", type=int, default=4, metavar="N", help="guest operations after the fill (default 4)")
    p.add_argument("--span", type=int, default=256, metavar="SECTORS", help="sectors the guest uses (default 256)")
    p.add_argument("--trace", metavar="FILE", help="also keep the whole trace (JSON lines)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..block.drivespec import DriveSpecError, parse_drive_spec
    from ..machine.board import ExitKind
    from ..tracereader import build
    from ..traceview import life, summary

    elf = guest_dir(args.guests) / f"{args.guest}.elf"
    if not elf.exists():
        print(f"blockbed explain: {elf} not found; build the guests with `make guests`", file=sys.stderr)
        return 2
    try:
        iface = parse_drive_spec(args.drive).interface
    except DriveSpecError as exc:
        print(f"blockbed explain: {exc}", file=sys.stderr)
        return 2
    try:
        result, serial, events = run_traced(str(elf), args.drive, f"dev={iface} ops={args.ops} "
                                            f"span={args.span} seed=1")
    except ValueError as exc:
        print(f"blockbed explain: {exc}", file=sys.stderr)
        return 2
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in events)
    if result.kind is not ExitKind.GUEST_EXIT or result.exit_status:
        sys.stdout.write(serial.decode(errors="replace"))
        print(f"blockbed explain: the guest did not pass: {result.reason}", file=sys.stderr)
        return 1
    tr = build(events)
    print(summary(tr))
    for op in ("write", "flush"):
        r = tr.first(op)
        print()
        print(f"== the first {op}" if r is not None else f"== no {op} in this run")
        if r is not None:
            print(life(tr, r))
    return 0


def run_traced(elf: str, drive: str, append: str) -> tuple:
    """Boot ``elf`` on one drive with every event recorded: (result, serial bytes,
    events as the dicts a JSON-lines trace holds).  ValueError for a bad drive."""
    from .. import trace
    from ..devices.attach import attach_drives
    from ..machine import Machine, MachineConfig

    serial = bytearray()
    machine = Machine(MachineConfig(echo_serial=serial.extend, timeout_s=120))
    rec = trace.Recorder()
    try:
        attach_drives(machine, [drive])
        machine.load_kernel(elf, append)
        with rec:
            result = machine.run()
    finally:
        machine.close()
    return result, bytes(serial), [json.loads(ev.to_json()) for ev in rec.events]
