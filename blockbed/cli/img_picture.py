"""``blockbed img map --picture OUT IMAGE``: draw where a qcow2 file keeps what.

One row of cells per stretch of the file, one cell per host cluster, coloured
by what points to it (:mod:`blockbed.block.qcow2.layout`): header, L1, L2
tables, refcount table and blocks, snapshot table and snapshot L1 tables,
data, compressed data, unused.  Needs the optional extra ``blockbed[pictures]``.
"""

from __future__ import annotations

import argparse
import sys

COLOURS = {"header": "#000000", "L1 table": "#d62728", "L2 table": "#ff7f0e",
           "refcount table": "#1f77b4", "refcount block": "#17becf", "snapshot table": "#9467bd",
           "snapshot L1": "#e377c2", "data": "#2ca02c", "compressed data": "#bcbd22", "unused": "#eeeeee"}
PER_ROW = 64


def draw(lay, path: str, title: str) -> None:
    from ..pictures import pyplot, save
    plt = pyplot()
    n = max(lay.clusters, 1)
    rows = (n + PER_ROW - 1) // PER_ROW
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.25 * min(rows, 60)))
    by_kind: dict[str, list[tuple[int, int]]] = {}
    for c in range(n):
        by_kind.setdefault(lay.kinds.get(c, "unused"), []).append((c % PER_ROW, c // PER_ROW))
    for kind, cells in by_kind.items():
        xs = [x for x, _ in cells]
        ys = [-y for _, y in cells]
        ax.bar(xs, 0.8, bottom=[y - 0.4 for y in ys], width=0.9, color=COLOURS[kind], align="edge",
               label=f"{kind} ({len(cells)})")
    ax.set_xlim(0, PER_ROW)
    ax.set_ylim(-rows, 1)
    ax.set_yticks([-r for r in range(rows)][:60], [f"{r * PER_ROW * lay.cluster_size:#x}" for r in range(rows)][:60])
    ax.set_xlabel(f"cluster within the row ({lay.cluster_size} bytes each)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    save(fig, path)
    plt.close(fig)


def map_picture(a: argparse.Namespace) -> int:
    """The ``--picture`` branch of ``img map`` (qcow2 only)."""
    from ..block.qcow2.header import ImageFormatError
    from ..block.qcow2.layout import read_layout
    from ..pictures import PicturesUnavailable, check_output
    try:
        check_output(a.picture)
        if a.f not in (None, "qcow2"):
            raise ValueError(f"--picture draws qcow2 images, not {a.f}")
        lay = read_layout(a.filename)
        counts = ", ".join(f"{k} {v}" for k, v in lay.counts().items() if v)
        draw(lay, a.picture, f"{a.filename}: {lay.clusters} clusters — {counts}")
    except (ValueError, ImageFormatError, PicturesUnavailable) as exc:
        print(f"blockbed img: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"blockbed img: {a.filename if exc.filename is None else exc.filename}: {exc.strerror}",
              file=sys.stderr)
        return 1
    print(f"{counts}; picture written to {a.picture}")
    return 0
