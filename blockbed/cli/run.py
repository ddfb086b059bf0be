"""``blockbed run``: boot a guest ELF, print its serial transcript, exit with its status.

Exit status: the value the guest wrote to the debug-exit port (guests write 0
for success) when it is 0..118 — a larger value would collide with the host
outcomes or wrap around to 0, so it is reported as 119 — or one of the host outcomes in
:data:`blockbed.machine.board.HOST_EXIT_STATUS` — 120 machine stopped by the
block layer's error policy, 121 guest fault, 122 halted with nothing to wake
it, 123 instruction budget used up, 124 wall-clock timeout, 125 stdout closed
(broken pipe) before the guest exited, 126 an internal error of blockbed (a device
model raised: a bug to report, not the guest's doing) — with a one-line reason on stderr.  A one-line summary (exits by kind, virtual ticks, wall
time) follows on stderr.  Bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from .. import trace

#: Exit status when stdout is closed before the guest exits (``blockbed run … | head``): the
#: guest's outcome is unknown, so it must never read as success (0).
BROKEN_PIPE_STATUS = 125


def _positive_seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds greater than zero (nan, inf, 0, -1 refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds greater than 0, "
                                         f"not {text!r}")
    return value


def _positive_int(text: str) -> int:
    """``--max-instructions`` and ``--memory``: a whole number greater than zero."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="boot a guest ELF on the machine",
                       description=__doc__.splitlines()[0],
                       epilog="exit status: the guest's debug-exit value (0-118; larger values: 119); 120 stopped, 121 guest fault, "
                              "122 halted, 123 instruction budget, 124 timeout, 125 stdout closed "
                              "(broken pipe), 126 internal error, 2 bad arguments")
    p.add_argument("--kernel", required=True, metavar="ELF", help="multiboot guest ELF or Linux bzImage")
    p.add_argument("--append", default="", metavar="STR", help="guest command line")
    p.add_argument("--initrd", default=None, metavar="FILE",
                   help="initial ramdisk for a Linux bzImage --kernel (boot protocol ramdisk_image)")
    p.add_argument("--memory", type=_positive_int, default=256, metavar="MiB", help="guest RAM (default 256)")
    p.add_argument("--drive", action="append", default=[], metavar="SPEC",
                   help="file=PATH,format=…,if=virtio|ahci|ide|lsi,cache=… (repeatable)")
    p.add_argument("--object", action="append", default=[], metavar="OBJECTDEF",
                   help="secret,id=ID,data=PASS|file=PATH[,format=raw|base64] (for "
                        "encrypt.key-secret=ID in --drive)")
    p.add_argument("--timeout", type=_positive_seconds, default=60.0, metavar="S", help="wall-clock limit (default 60)")
    p.add_argument("--max-instructions", type=_positive_int, default=None, metavar="N",
                   help="instruction budget (slows tight loops: unicorn then counts every "
                        "instruction; Linux boots about 2.5x slower)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for device completion order")
    p.add_argument("--trace", metavar="FILE", help="write trace events as JSON lines ('-' for stderr)")
    p.add_argument("--cont", type=int, default=0, metavar="N",
                   help="when the error policy (werror/rerror=stop) stops the machine, "
                        "continue up to N times, as QEMU's monitor command 'cont' (the "
                        "failed request is retried); default 0: a stop ends the run (120)")
    p.add_argument("--quiet-summary", action="store_true", help="omit the summary line")
    p.set_defaults(func=main, parser=p)

    def one_line_error(message: str) -> None:
        # A bad argument is one line naming it (status 2), not the whole usage block.
        print(f"blockbed run: {message} (see 'blockbed run --help')", file=sys.stderr)
        sys.exit(2)
    p.error = one_line_error  # type: ignore[method-assign]


def main(args: argparse.Namespace) -> int:
    """Run the guest; a closed stdout (broken pipe) ends the run with :data:`BROKEN_PIPE_STATUS`."""
    try:
        return _run(args)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        print("blockbed: stdout closed (broken pipe) before the guest exited; "
              f"status {BROKEN_PIPE_STATUS}", file=sys.stderr)
        return BROKEN_PIPE_STATUS


def _run(args: argparse.Namespace) -> int:
    from ..machine import Machine, MachineConfig
    from ..machine.boot import BootError
    from ..machine.board import ExitKind

    if args.trace:
        try:
            trace.add_sink(trace.JsonLinesSink(args.trace))
        except OSError as exc:
            print(f"blockbed run: --trace {args.trace}: {exc.strerror}", file=sys.stderr)
            return 2

    def echo(b: bytes) -> None:
        sys.stdout.buffer.write(b)

    try:
        machine = Machine(MachineConfig(memory_mib=args.memory, seed=args.seed, timeout_s=args.timeout,
                                        max_instructions=args.max_instructions, echo_serial=echo))
    except ValueError as exc:
        print(f"blockbed run: {exc}", file=sys.stderr)
        return 2
    backends: list = []
    try:
        if args.object:
            from ..block import secrets
            from ..block.driver import BlockError
            try:
                for obj in args.object:
                    secrets.add_object(obj)
            except BlockError as exc:
                print(f"blockbed run: --object: {exc}", file=sys.stderr)
                return 2
        if args.drive:
            from ..devices.attach import attach_drives
            try:
                backends = attach_drives(machine, args.drive)
            except ValueError as exc:
                print(f"blockbed run: {exc}", file=sys.stderr)
                return 2
        try:
            machine.load_kernel(args.kernel, args.append, args.initrd)
        except BootError as exc:
            print(f"blockbed run: {args.kernel}: {exc}", file=sys.stderr)
            return 2
        if args.cont < 0:
            print("blockbed run: --cont must not be negative", file=sys.stderr)
            return 2
        start = time.monotonic()
        result = machine.run()
        for n in range(1, args.cont + 1):
            if result.kind is not ExitKind.STOPPED:
                break
            left = args.timeout - (time.monotonic() - start)
            if left <= 0:
                break
            print(f"blockbed: {result.reason}; continuing ({n} of {args.cont})", file=sys.stderr)
            machine.resume()
            result = machine.run(timeout_s=left)
    finally:
        machine.close()
    sys.stdout.flush()
    for w in result.warnings:
        print(f"blockbed: warning: {w}", file=sys.stderr)
    if result.kind is ExitKind.GUEST_EXIT:
        if result.exit_code:                # say which outcome this status is
            mapped = "" if result.exit_status == result.exit_code else \
                f" (status {result.exit_status}: guest values above 118 are reported as 119)"
            print(f"blockbed: guest exited with debug-exit value {result.exit_code}{mapped}",
                  file=sys.stderr)
    else:
        print(f"blockbed: {result.reason}", file=sys.stderr)
        if result.fault is not None:
            print(result.fault.report(), file=sys.stderr)
    if not args.quiet_summary:
        print(result.summary() + _requests_summary(result, backends), file=sys.stderr)
    return result.exit_status


def _requests_summary(result, backends: list) -> str:
    """"; requests N (exits per request X)": the block requests the guest's drives
    completed (reads, writes, flushes, discards, write-zeroes) and the port/MMIO exits
    it took per request, the cost a controller's protocol puts on each I/O."""
    if not backends:
        return ""
    n = sum(getattr(b.stats, k).ops for b in backends for k in b.stats.KINDS)
    if not n:
        return "; requests 0"
    io_exits = result.exits.get("pio", 0) + result.exits.get("mmio", 0)
    return f"; requests {n} (exits per request {io_exits / n:.1f})"
