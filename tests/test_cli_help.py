"""``--help`` of every blockbed subcommand: each option says what it does in one line, and no
reST markup from the docstrings the descriptions come from leaks into the terminal (issue
#12).  An unknown option is reported with the usage of the subcommand it was given to."""

from __future__ import annotations

import argparse
import re

import pytest

from blockbed.cli import build_parser, main, plain

# ``literal``, :role:`target`, `link`_ (and any other backquoted text)
REST = re.compile(r"``|:[a-z:]+:`|`[^`\n]+`_?")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_parsers():
    """(path, parser) of every command and subcommand, depth first."""
    todo = [(("blockbed",), build_parser())]
    while todo:
        path, p = todo.pop()
        yield path, p
        todo += [(path + (name,), sub) for name, sub in _subparsers(p).items()]


IMG = sorted(_subparsers(_subparsers(build_parser())["img"]))
ALL = sorted(_all_parsers(), key=lambda t: t[0])


def test_the_walk_sees_every_img_subcommand():
    assert {"create", "info", "check", "map", "convert", "compare", "snapshot", "resize",
            "bitmap", "measure", "rebase", "commit", "dd", "amend", "bench"} <= set(IMG)


@pytest.mark.parametrize("path,parser", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_every_option_has_one_line_of_help(path, parser):
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and a.help is not argparse.SUPPRESS and not (a.help or "").strip()]
    assert not missing, f"{' '.join(path)}: no help for {missing}"
    for a in parser._actions:
        assert "\n" not in (a.help or ""), (path, a.option_strings, a.help)


@pytest.mark.parametrize("path,parser", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_help_output_has_no_rest_markup(path, parser, capsys):
    with pytest.raises(SystemExit) as ex:
        main([*path[1:], "--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(path)}"), out[:200]
    if len(path) > 1:                    # what the subcommand does, under its usage
        assert parser.description and parser.description.split()[0] in out, out[:300]
    bad = [line for line in out.splitlines() if REST.search(line)]
    assert not bad, f"{' '.join(path)} --help shows reST markup: {bad}"


def test_plain_strips_rest_inline_markup():
    assert plain("``blockbed run``: see :func:`blockbed.trace.emit`, :data:`~a.b.C`, "
                 ":ref:`the guide <guide>` and `make linux-guest`.") == \
        "blockbed run: see blockbed.trace.emit, C, the guide and 'make linux-guest'."
    assert plain("no markup, a 'quote' and a `` lone pair") == \
        "no markup, a 'quote' and a `` lone pair"


@pytest.mark.parametrize("argv", [["img", "create", "--bogus", "x", "1M"],
                                  ["img", "info", "--bogus", "x"],
                                  ["crashtest", "--bogus"],
                                  ["logwrites", "dump", "--bogus", "x"]])
def test_unknown_option_shows_that_subcommands_usage(argv, capsys):
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 2
    err = capsys.readouterr().err
    sub = " ".join(argv[:argv.index("--bogus")])
    assert err.startswith(f"usage: blockbed {sub} "), err
    assert f"blockbed {sub}: error: unrecognized arguments: --bogus" in err


def test_unknown_run_option_names_run(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["run", "--kernel", "x.elf", "--bogus"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "blockbed run: unrecognized arguments: --bogus " \
                          "(see 'blockbed run --help')"
