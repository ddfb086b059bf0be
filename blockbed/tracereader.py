"""Read a trace back: JSON lines from ``blockbed run --trace`` → requests.

Every event a layer emits while a guest request is current carries its id as
``req`` (see :mod:`blockbed.trace`).  This module groups the events of each
id into a :class:`Request` — its ``req.submit`` (which controller, the decoded
command), the backend / format / file events below it, its ``req.complete``
and the interrupt after it — and attributes guest exits to requests: the exits
since the previous submission on the same controller up to a request's
submission are what the guest spent on it (programming the controller, and
handling the previous request's completion), so each exit counts once; with
several requests submitted by one notification the first takes them all.
Exits to the serial console (ports 0x3f8-0x3ff: the guest printing) are not
storage work and are left out of the attribution.  The first request on a controller also carries the driver's set-up;
:func:`summarise` leaves it out of the per-request averages.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

#: layers, top to bottom, by event-name prefix (the tree indents by this depth)
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("guest exit", ("pio.", "mmio.")),
    ("controller", ("req.", "virtio", "ahci.", "ide.", "lsi.", "scsi.", "ata.")),
    ("backend", ("backend.", "blkdebug.", "logwrites.")),
    ("format", ("qcow2.", "raw.", "preallocate.", "luks.")),
    ("protocol", ("file.",)),
)
INTERRUPT_PREFIXES = ("apic.", "pci.intx", "cpu.interrupt", "lsi.irq", "virtio.irq", "msi")


class TraceError(Exception):
    """The file is not a blockbed trace (the message says where and why)."""


def layer_of(name: str) -> str:
    """The layer an event belongs to ('interrupt' for the completion's signal)."""
    if name.startswith(INTERRUPT_PREFIXES):
        return "interrupt"
    for layer, prefixes in LAYERS:
        if name.startswith(prefixes):
            return layer
    return "other"


CONSOLE_PORTS = range(0x3F8, 0x400)


def is_exit(ev: dict[str, Any]) -> bool:
    return ev["event"].startswith(("pio.", "mmio."))


def is_console(ev: dict[str, Any]) -> bool:
    return ev.get("port", -1) in CONSOLE_PORTS


@dataclass
class Request:
    id: int
    controller: str
    op: str
    submit: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    complete: dict[str, Any] | None = None
    exits: list[dict[str, Any]] = field(default_factory=list)   # attributed guest exits
    first_on_controller: bool = False

    @property
    def syscalls(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"].startswith("file.")]

    @property
    def latency_ns(self) -> int | None:
        return None if self.complete is None else self.complete["t"] - self.submit["t"]

    @property
    def fua(self) -> bool:
        s = self.submit
        for part in ("fis", "cdb", "taskfile"):
            if isinstance(s.get(part), dict) and s[part].get("fua"):
                return True
        return s.get("fis", {}).get("command") == "WRITE DMA FUA EXT" or any(
            e["event"] == "backend.write" and e.get("fua") for e in self.events)

    def layer_span_ns(self, layer: str) -> int | None:
        """Time from the first to the last event of ``layer`` within the request."""
        ts = [e["t"] for e in self.events if layer_of(e["event"]) == layer]
        return (max(ts) - min(ts)) if ts else None

    def layers(self) -> set[str]:
        return {layer_of(e["event"]) for e in self.events}


@dataclass
class Trace:
    events: list[dict[str, Any]]
    requests: dict[int, Request]

    def first(self, op: str) -> Request | None:
        for r in self.requests.values():
            if r.op == op:
                return r
        return None

    def exits(self) -> list[dict[str, Any]]:
        return [e for e in self.events if is_exit(e)]


def parse_lines(lines: Iterable[str], where: str = "trace") -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}:{n}: not a JSON line ({exc.msg})") from None
        if not isinstance(ev, dict) or "event" not in ev or "seq" not in ev or "t" not in ev:
            raise TraceError(f"{where}:{n}: not a blockbed trace event (no seq/t/event)")
        out.append(ev)
    return out


def load(path: str) -> Trace:
    try:
        with open(path, encoding="utf-8") as fh:
            return build(parse_lines(fh, path))
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text file") from None


def build(events: list[dict[str, Any]]) -> Trace:
    """Group events into requests and attribute exits (see the module docstring)."""
    reqs: dict[int, Request] = {}
    pending_exits: dict[str, list[dict[str, Any]]] = {}     # controller -> exits since its last req event
    since_any: list[dict[str, Any]] = []                    # exits no controller has seen yet
    seen_controllers: set[str] = set()
    for ev in events:
        name = ev["event"]
        if is_exit(ev):
            if is_console(ev):
                continue
            since_any.append(ev)
            for lst in pending_exits.values():
                lst.append(ev)
            continue
        rid = ev.get("req")
        if rid is None:
            continue
        if name == "req.submit":
            ctl = ev.get("controller", "?")
            r = Request(rid, ctl, ev.get("op", "other"), ev)
            r.first_on_controller = ctl not in seen_controllers
            r.exits = pending_exits.get(ctl, since_any) if ctl in seen_controllers else since_any
            seen_controllers.add(ctl)
            pending_exits[ctl] = []
            since_any = []
            reqs[rid] = r
        r = reqs.get(rid)
        if r is None:
            continue
        r.events.append(ev)
        if name == "req.complete":
            r.complete = ev
    return Trace(events, reqs)


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def summarise(tr: Trace) -> dict[str, dict[str, Any]]:
    """Per controller: requests by op, exits per request (first request left out),
    mean latency per layer (µs) and host syscalls per request by op."""
    out: dict[str, dict[str, Any]] = {}
    for r in tr.requests.values():
        s = out.setdefault(r.controller, {"requests": {}, "_exits": [], "_lat": {}, "_sys": {}})
        s["requests"][r.op] = s["requests"].get(r.op, 0) + 1
        if not r.first_on_controller:
            s["_exits"].append(len(r.exits))
        lat = r.latency_ns
        if lat is not None:
            s["_lat"].setdefault("submit→complete", []).append(lat / 1000)
        for layer in ("backend", "format", "protocol"):
            span = r.layer_span_ns(layer)
            if span is not None:
                s["_lat"].setdefault(layer, []).append(span / 1000)
        calls = s["_sys"].setdefault(r.op, {})
        for e in r.syscalls:
            calls[e["event"][5:]] = calls.get(e["event"][5:], 0) + 1
    for s in out.values():
        ex = s.pop("_exits")
        s["exits_per_request"] = round(_mean(ex), 1) if ex else None
        s["latency_us"] = {k: round(_mean(v), 1) for k, v in s.pop("_lat").items()}
        n = s["requests"]
        s["syscalls_per_request"] = {op: {k: round(c / n[op], 2) for k, c in sorted(calls.items())}
                                     for op, calls in s.pop("_sys").items() if calls}
    return out
