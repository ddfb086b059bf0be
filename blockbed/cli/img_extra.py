"""The qemu-img subcommands that live in their own modules (measure, rebase, commit,
dd, amend, bench): one ``register`` call wires them all into ``blockbed img``."""

from __future__ import annotations

import argparse


def register(s: argparse._SubParsersAction, guard) -> None:
    from . import img_measure
    img_measure.register(s, guard)
    from . import img_rebase
    img_rebase.register(s, guard)
    from . import img_commit
    img_commit.register(s, guard)
    from . import img_dd
    img_dd.register(s, guard)
    from . import img_amend
    img_amend.register(s, guard)
    from . import img_bench
    img_bench.register(s, guard)
