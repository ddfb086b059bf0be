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
    ev = Event(_seq, time.monotonic_ns(), name, fields)
    for sink in _sinks:
        sink(ev)


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
