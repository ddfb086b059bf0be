"""``blockbed demo``: the main demonstration.

1. ``hello`` boots and lists the PCI functions it finds.
2. ``disktest`` runs on virtio-blk over a qcow2 image once per QEMU cache
   mode, with a table of what reached the host (:mod:`.demo_virtio`).
3. The crash-consistency conformance table: flushtest on every controller
   under every cache mode, power cut at every moment that matters, each
   durable write checked (:func:`blockbed.crashrun.demo.conformance_table`).

Exit status 0 when every part passed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demonstration")
    p.add_argument("--guests", default=None, metavar="DIR", help="built guests (default guests/build)")
    p.set_defaults(func=main)


def guest_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[2] / "guests" / "build"


def main(args: argparse.Namespace) -> int:
    from ..machine import Machine, MachineConfig

    hello = guest_dir(args.guests) / "hello.elf"
    if not hello.exists():
        print(f"blockbed demo: {hello} not found; build the guests with `make guests`", file=sys.stderr)
        return 2
    print("== hello: boot a multiboot guest and list the PCI functions it finds")
    m = Machine(MachineConfig(echo_serial=lambda b: sys.stdout.buffer.write(b)))
    try:
        m.load_kernel(str(hello), "demo=1")
        result = m.run(timeout_s=60)
    finally:
        m.close()
    sys.stdout.flush()
    print(result.summary())
    status = result.exit_status
    print()
    from .demo_virtio import run_virtio_table
    status = status or run_virtio_table(guest_dir(args.guests))
    print()
    from ..crashrun.demo import conformance_table
    rows = conformance_table()
    if any(r.result in ("FAIL", "ERROR") for r in rows):
        status = status or 1
    return status
