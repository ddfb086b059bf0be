"""The ``blockbed`` command: composes the packages, holds no logic of its own.

Each subcommand lives in its own module exposing ``register(subparsers)``;
this file lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, one-line help) — one line to add a subcommand.
SUBCOMMANDS: tuple[str, ...] = (
    "blockbed.cli.run",
    "blockbed.cli.demo",
    "blockbed.cli.crashtest",
    "blockbed.cli.img",
    "blockbed.cli.logwrites",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockbed",
        description="blockbed: a test bed for the virtual storage stack — boot test guests against "
                    "emulated disk controllers, check durability, inspect images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("blockbed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
