"""Structured trace events, one module for every layer.

Each layer names its events ``layer.what`` (``pio.out``, ``pci.bar_map``,
``virtio.req``, ``backend.write``, ``file.pwritev`` …) and passes plain
keyword fields.  With tracing off (the default) an event costs one attribute
test, so hot paths guard the call::

    from blockbed import trace
    if trace.enabled:
        trace.emit("backend.write", offset=off, length=n, fua=fua)

Sinks receive :class:`Event` objects.  ``blockbed run --trace FILE`` installs a
JSON-lines sink; tests install a :class:`Recorder` to assert on the sequence a
request took from the guest's instruction down to the host system call.
``BLOCKBED_TRACE=path`` (or ``-`` for stderr) enables tracing for any process,
and ``BLOCKBED_TRACE_FILTER=prefix1,prefix2`` keeps only matching events.

Requests.  A controller that takes a guest request calls :func:`begin` (a new
id, a ``req.submit`` event, the id made :data:`current`); every event emitted
while an id is current carries it as the field ``req`` — so the backend, the
format driver and the file driver tag their events without knowing about
requests.  Deferred work (a completion event, an NCQ tag) re-enters its
request with :func:`enter`; :func:`end` emits ``req.complete`` (the interrupt
that follows in the same handler still carries the id).  Every entry point
into device code (a port or MMIO exit, an event-queue callback) resets
:data:`current` first, so an id never leaks into an unrelated exit.  The
machine is single-threaded; ``img convert``'s writer thread runs outside any
machine and outside any request.  All of this is only called under
``if trace.enabled:``, so with tracing off it costs nothing more.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

enabled: bool = False
_sinks: list[Callable[["Event"], None]] = []
_prefixes: tuple[str, ...] = ()
_seq = 0
current: int | None = None      # the request id events are tagged with (see the docstring)
_next_req = 0
_open: dict[Any, tuple[int, str]] = {}   # key -> (id, controller) of a request in flight


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    time_ns: int
    name: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        import json     # only when tracing to a file: keeps json off every start-up
        return json.dumps({"seq": self.seq, "t": self.time_ns, "event": self.name, **self.fields},
                          default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value[:64]).hex()
    return repr(value)


def emit(name: str, **fields: Any) -> None:
    """Record one event.  Callers on hot paths check :data:`enabled` first."""
    global _seq
    if not enabled:
        return
    if _prefixes and not name.startswith(_prefixes):
        return
    _seq += 1
    if current is not None and "req" not in fields:
        fields["req"] = current
    ev = Event(_seq, time.monotonic_ns(), name, fields)
    for sink in _sinks:
        sink(ev)


def begin(controller: str, key: Any, **fields: Any) -> int:
    """A guest request arrived at ``controller`` under ``key`` (a hashable naming it
    while in flight: virtio chain head, AHCI slot or NCQ tag, IDE channel, the
    SCSI request): a new id, made current, and a ``req.submit`` event carrying
    the decoded fields the device passes."""
    global current, _next_req
    _next_req += 1
    current = _next_req
    _open[key] = (current, controller)
    emit("req.submit", controller=controller, **fields)
    return current


def rekey(old: Any, new: Any) -> None:
    """The in-flight request known as ``old`` is from now on known as ``new``."""
    if old in _open:
        _open[new] = _open.pop(old)


def enter(key: Any) -> int | None:
    """Make the in-flight request ``key`` current again (None if it is unknown)."""
    global current
    got = _open.get(key)
    current = None if got is None else got[0]
    return current


def end(key: Any, **fields: Any) -> None:
    """The request ``key`` (or, when no request is known by that key, the current
    one: it completed while being submitted) completes: ``req.complete``.  It
    stays current until the next entry point, so the interrupt is tagged too."""
    global current
    got = _open.pop(key, None)
    if got is None:
        if current is None:
            return
        for k, v in list(_open.items()):
            if v[0] == current:
                got = _open.pop(k)
                break
        else:
            return
    current = got[0]
    emit("req.complete", controller=got[1], **fields)


def leave() -> None:
    """An entry point into device code: no request is current."""
    global current
    current = None


def add_sink(sink: Callable[[Event], None], prefixes: Iterable[str] = ()) -> None:
    """Install a sink and turn tracing on."""
    global enabled, _prefixes
    _sinks.append(sink)
    if prefixes:
        _prefixes = tuple(prefixes)
    enabled = True


def remove_sink(sink: Callable[[Event], None]) -> None:
    global enabled, _prefixes
    if sink in _sinks:
        _sinks.remove(sink)
    if not _sinks:
        enabled = False
        _prefixes = ()
        leave()
        _open.clear()


class Recorder:
    """A sink that keeps events in a list; a context manager for tests."""

    def __init__(self, prefixes: Iterable[str] = ()):
        self.events: list[Event] = []
        self._prefixes = tuple(prefixes)

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def __enter__(self) -> "Recorder":
        add_sink(self, self._prefixes)
        return self

    def __exit__(self, *exc: object) -> None:
        remove_sink(self)


class JsonLinesSink:
    """Writes one JSON object per line to a file (or stderr for ``-``)."""

    def __init__(self, path: str):
        self._fh = sys.stderr if path == "-" else open(path, "w", buffering=1 << 16)

    def __call__(self, ev: Event) -> None:
        self._fh.write(ev.to_json() + "\n")

    def close(self) -> None:
        if self._fh is not sys.stderr:
            self._fh.close()


def _from_environment() -> None:
    path = os.environ.get("BLOCKBED_TRACE")
    if path:
        flt = [p for p in os.environ.get("BLOCKBED_TRACE_FILTER", "").split(",") if p]
        add_sink(JsonLinesSink(path), flt)


_from_environment()
