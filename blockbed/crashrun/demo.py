"""The conformance table ``blockbed demo`` ends with (issue 8).

``conformance_table()`` runs flushtest on every controller that has landed
under every cache mode, sweeps the crash states, and prints::

    controller     cache         writes verified  crash states  violations  result
    virtio         none                      83           150           0  PASS
    virtio         unsafe                    83           150         102  EXPECTED-FAIL
    …

"writes verified" counts guest writes the sweep held to a durability
promise; "violations" counts violating crash states.  ``unsafe`` must fail
(EXPECTED-FAIL); if it does not, the negative control failed and the row
says FAIL, as does any violation under a safe mode.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Sequence

CONTROLLERS = ("virtio", "ahci,ncq=on", "ahci,ncq=off", "ide", "lsi")
CACHES = ("none", "writeback", "writethrough", "directsync", "unsafe")


@dataclass
class Row:
    controller: str
    cache: str
    fmt: str
    writes_verified: int
    states: int
    violating_states: int
    result: str
    note: str = ""


def _available(iface: str) -> bool:
    from ..devices.attach import controller_module
    try:
        controller_module(iface.split(",")[0])
        return True
    except ValueError:
        return False


def conformance_table(controllers: Sequence[str] = CONTROLLERS, caches: Sequence[str] = CACHES,
                      fmt: str = "qcow2", states: int = 150, ops: int = 100, seed: int = 0,
                      out: Callable[[str], None] = print) -> list[Row]:
    """Run the matrix and print the table; returns the rows (result PASS /
    EXPECTED-FAIL / FAIL / ERROR)."""
    from ..block.registry import get_format
    from .crashtest import crashtest
    rows: list[Row] = []
    out(f"{'controller':<14} {'cache':<13} {'writes verified':>15} {'crash states':>13} "
        f"{'violations':>11}  result")
    tmp = tempfile.mkdtemp(prefix="blockbed-conformance-")
    try:
        for ctl in controllers:
            if not _available(ctl):
                out(f"{ctl:<14} (controller not available yet)")
                continue
            for cache in caches:
                img = os.path.join(tmp, f"disk.{fmt}")
                if os.path.exists(img):
                    os.unlink(img)
                get_format(fmt).create(img, 16 << 20, {})
                try:
                    rep = crashtest(f"file={img},format={fmt},if={ctl},cache={cache}",
                                    states=states, ops=ops, seed=seed, keep=False)
                except (ValueError, OSError) as e:
                    row = Row(ctl, cache, fmt, 0, 0, 0, "ERROR", str(e))
                else:
                    bad = rep.sweep.violating_states + sum(1 for v in rep.violations
                                                           if v.state == "-" and v.kind != "guest")
                    if cache == "unsafe":
                        result = "EXPECTED-FAIL" if bad else "FAIL"
                    else:
                        result = "PASS" if bad == 0 else "FAIL"
                    note = "" if rep.guest_exit == 0 else f"guest exit {rep.guest_exit}"
                    row = Row(ctl, cache, fmt, rep.durable, rep.sweep.states_checked, bad,
                              result, note)
                rows.append(row)
                out(f"{row.controller:<14} {row.cache:<13} {row.writes_verified:>15} "
                    f"{row.states:>13} {row.violating_states:>11}  {row.result}"
                    f"{'  (' + row.note + ')' if row.note else ''}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
