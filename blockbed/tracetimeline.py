"""A timeline of a trace: one lane per layer, one bar per request.

Each request draws, in every layer it reached, a bar from its first to its
last event there (the controller lane from submission to completion), so a
student sees where a write spends its time and how requests overlap.  Flushes
are drawn in red and FUA writes hatched; guest exits are ticks in the top
lane.  Time is in milliseconds from the first event.
"""

from __future__ import annotations

from .pictures import pyplot, save
from .tracereader import Trace, layer_of

LANES = ("guest exit", "controller", "backend", "format", "protocol", "interrupt")
_COLOURS = {"read": "#4c72b0", "write": "#55a868", "flush": "#c44e52", "discard": "#8172b2",
            "write_zeroes": "#937860", "other": "#999999"}


def draw(tr: Trace, path: str) -> None:
    plt = pyplot()
    if not tr.events:
        raise ValueError("the trace has no events")
    t0 = tr.events[0]["t"]
    ms = lambda t: (t - t0) / 1e6      # noqa: E731
    fig, ax = plt.subplots(figsize=(12, 4.5))
    y = {lane: len(LANES) - 1 - i for i, lane in enumerate(LANES)}
    exits = [ms(e["t"]) for e in tr.exits()]
    if exits:
        ax.vlines(exits, y["guest exit"] - 0.3, y["guest exit"] + 0.3, colors="#bbbbbb", linewidth=0.3)
    for r in tr.requests.values():
        spans: dict[str, list[float]] = {}
        for e in r.events:
            spans.setdefault(layer_of(e["event"]), []).append(ms(e["t"]))
        for lane, ts in spans.items():
            if lane not in y:
                continue
            start, width = min(ts), max(max(ts) - min(ts), 0.005)
            ax.barh(y[lane], width, left=start, height=0.6, color=_COLOURS.get(r.op, "#999999"),
                    hatch="//" if r.fua else None, edgecolor="black", linewidth=0.2)
    ax.set_yticks([y[lane] for lane in LANES], list(LANES))
    ax.set_xlabel("time (ms from the first event)")
    ax.set_title(f"{len(tr.requests)} requests, {len(exits)} guest exits")
    from matplotlib.patches import Patch
    handles = [Patch(color=c, label=op) for op, c in _COLOURS.items()
               if any(r.op == op for r in tr.requests.values())]
    if any(r.fua for r in tr.requests.values()):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="FUA"))
    ax.legend(handles=handles, loc="upper right", fontsize="small")
    save(fig, path)
    plt.close(fig)
