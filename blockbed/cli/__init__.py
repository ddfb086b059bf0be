"""The ``blockbed`` command: composes the packages, holds no logic of its own.

Each subcommand lives in its own module exposing ``register(subparsers)``;
this file lists them.  Only the module of the subcommand being run is imported
(``blockbed img convert`` should not pay for the machine, the devices or the
crash engine at start-up); ``blockbed --help`` imports them all.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

# command name -> module: one line to add a subcommand.
SUBCOMMANDS: dict[str, str] = {
    "run": "blockbed.cli.run",
    "demo": "blockbed.cli.demo",
    "crashtest": "blockbed.cli.crashtest",
    "img": "blockbed.cli.img",
    "logwrites": "blockbed.cli.logwrites",
    "trace": "blockbed.cli.trace",
    "explain": "blockbed.cli.explain",
    "io": "blockbed.cli.io",
    "nbd": "blockbed.cli.nbd",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only`` (a subcommand name), just that subcommand."""
    parser = argparse.ArgumentParser(
        prog="blockbed",
        description="blockbed: a test bed for the virtual storage stack — boot test guests against "
                    "emulated disk controllers, check durability, inspect images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(sub)
    _finish(parser)
    return parser


# reST inline markup of docstring-derived text: ``literal``, :role:`target` (with an optional
# ~ and "title <target>"), `text`_ links and `interpreted` text.
_REST = re.compile(r"``(.+?)``|:[\w:.-]+:`~?(?:([^`<]*?)\s*<[^`>]*>|([^`]*))`|`([^`]+)`_{0,2}",
                   re.S)


def plain(text: str | None) -> str | None:
    """``text`` without reST inline markup, for --help (``x`` -> x, :func:`a.b` -> a.b,
    :func:`~a.b` -> b); single-quoted `x` (a command in a help string) -> 'x'."""
    if not text:
        return text

    def one(m: re.Match) -> str:
        lit, title, target, interp = m.groups()
        if target is not None and m.group(0).split("`", 1)[1].startswith("~"):
            return target.rsplit(".", 1)[-1]
        if interp is not None:
            return f"'{interp}'"
        return next(g for g in (lit, title, target) if g is not None)
    return _REST.sub(one, text)


def _finish(parser: argparse.ArgumentParser) -> None:
    """Every parser, recursively: help text without reST markup, and ``parser`` set to the
    parser itself so an unknown option is reported with that subcommand's usage (the
    deepest subcommand's default wins: argparse copies a sub-namespace over its parent's)."""
    parser.description = plain(parser.description)
    parser.epilog = plain(parser.epilog)
    if "parser" not in parser._defaults:
        parser.set_defaults(parser=parser)
    for action in parser._actions:
        if action.help is not argparse.SUPPRESS:
            action.help = plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain(choice.help)
                sub = action.choices[choice.dest]
                if not sub.description:      # its --help then says what it does, too
                    sub.description = choice.help
            for sub in action.choices.values():
                _finish(sub)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Report an unknown option with the subcommand's own usage, not the top-level one.
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("blockbed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
