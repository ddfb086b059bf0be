"""Text views of a trace: the summary table and the life of one request.

The life of a request is an indented tree, one level per layer: the guest
instruction whose exit submitted it, the controller's decoded command, the
BlockBackend call, the format driver's work (qcow2 L2 lookups, allocations,
COW, refcount updates), the host system calls, and back up to the completion
(used ring / status) and the interrupt.
"""

from __future__ import annotations

from typing import Any

from .tracereader import Request, Trace, layer_of, summarise

_SKIP = {"seq", "t", "event", "req"}
_DEPTH = {"guest exit": 0, "controller": 1, "backend": 2, "format": 3, "protocol": 4,
          "interrupt": 1, "other": 2}


def fields_text(ev: dict[str, Any]) -> str:
    parts = []
    for k, v in ev.items():
        if k in _SKIP or v is None or v == "":
            continue
        if isinstance(v, dict):
            inner = " ".join(f"{a}={_val(b)}" for a, b in v.items() if b is not None)
            parts.append(f"{k}{{{inner}}}")
        else:
            parts.append(f"{k}={_val(v)}")
    return " ".join(parts)


def _val(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return str(v)
    return str(v) if -1024 < v < 1024 else f"{v:#x}"


def exit_text(ev: dict[str, Any]) -> str:
    where = f"port {ev['port']:#x}" if "port" in ev else f"{ev.get('handler', '?')}+{ev.get('offset', 0):#x}"
    val = ev.get("value")
    insn = ev.get("insn", "")
    return f"{ev['event']} {where} size={ev.get('size')} value={_val(val) if val is not None else '?'}" + \
        (f"   ← {insn}" if insn else "")


def life(tr: Trace, r: Request) -> str:
    """The life of one request as an indented tree (see the module docstring)."""
    t0 = r.submit["t"]
    lines = [f"request {r.id}: {r.controller} {r.op}" + (" (FUA)" if r.fua else "")]
    n = len(r.exits)
    if r.exits:
        lines.append(f"  guest: {n} exit{'s' if n != 1 else ''} since the controller's previous request"
                     + (" (includes driver set-up: first request)" if r.first_on_controller else ""))
        shown = r.exits[-4:]
        if n > len(shown):
            lines.append(f"    … {n - len(shown)} more")
        for e in shown:
            lines.append(f"    {exit_text(e)}")
    for e in r.events:
        layer = layer_of(e["event"])
        ind = "  " * (_DEPTH.get(layer, 2) + 1)
        dt = (e["t"] - t0) / 1000
        lines.append(f"{ind}[{dt:9.1f} µs] {layer:<10} {e['event']} {fields_text(e)}".rstrip())
    if r.complete is None:
        lines.append("  (no completion in the trace)")
    else:
        lines.append(f"  completed after {r.latency_ns / 1000:.1f} µs; "
                     f"{len(r.syscalls)} host system call{'s' if len(r.syscalls) != 1 else ''}")
    return "\n".join(lines)


def summary(tr: Trace) -> str:
    s = summarise(tr)
    lines = [f"{len(tr.events)} events, {len(tr.exits())} guest exits, {len(tr.requests)} requests"]
    for ctl, d in s.items():
        reqs = ", ".join(f"{op} {n}" for op, n in sorted(d["requests"].items()))
        lines.append(f"controller {ctl}: {sum(d['requests'].values())} requests ({reqs})")
        epr = d["exits_per_request"]
        lines.append(f"  exits per request: {epr if epr is not None else 'n/a'}"
                     " (mean, first request left out)")
        lat = "  ".join(f"{k} {v} µs" for k, v in d["latency_us"].items())
        lines.append(f"  latency per layer (mean span): {lat}")
        for op, calls in d["syscalls_per_request"].items():
            calls_text = ", ".join(f"{k} {v}" for k, v in calls.items())
            lines.append(f"  host syscalls per {op}: {calls_text}")
    return "\n".join(lines)


__all__ = ["life", "summary", "fields_text"]
