"""Test-only faulty-device options: ``x-ignore-flush=on`` and ``x-ignore-fua=on``.

They make a device *lie*: it completes a FLUSH to the guest without flushing,
or drops the FUA bit of a write and still reports it durable.  The crash
engine must catch both (issue: "test-only faulty device options … must be
caught"); they are its positive controls on the device side, as
``cache=unsafe`` is on the block-layer side.

They are implemented once, for every controller, as a proxy between the
device model and its :class:`~blockbed.block.backend.BlockBackend`: the
device calls ``flush()``/``writev(fua=True)`` exactly as it would, the proxy
swallows the flush or the FUA flag, and the backend (and so the request log)
never hears of the promise — precisely what a device with the bug would do.
``crashtest`` accepts the options in ``--drive`` and strips them before the
drive spec reaches the block layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..backend import OK, BlockBackend

_OPT = re.compile(r"(?:^|,)(x-ignore-(?:flush|fua))(?:=(on|off))?(?=,|$)")


@dataclass(frozen=True)
class Faults:
    ignore_flush: bool = False
    ignore_fua: bool = False

    @property
    def any(self) -> bool:
        return self.ignore_flush or self.ignore_fua

    def describe(self) -> str:
        parts = [n for n, on in (("x-ignore-flush=on", self.ignore_flush),
                                 ("x-ignore-fua=on", self.ignore_fua)) if on]
        return ",".join(parts) or "none"


def split_faults(drive: str) -> tuple[str, Faults]:
    """Remove the x-ignore-* options from a drive spec; return the rest and the faults."""
    found: dict[str, bool] = {}

    def take(m: re.Match) -> str:
        found[m.group(1)] = (m.group(2) or "on") == "on"
        return ""

    rest = _OPT.sub(take, drive).lstrip(",")
    return rest, Faults(found.get("x-ignore-flush", False), found.get("x-ignore-fua", False))


class FaultyBackend:
    """Delegates everything to ``backend`` except the promises the faults swallow."""

    def __init__(self, backend: BlockBackend, faults: Faults):
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "_faults", faults)

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._backend, name, value)

    def flush(self) -> int:
        if self._faults.ignore_flush:
            return OK
        return self._backend.flush()

    def writev(self, offset, bufs, fua: bool = False) -> int:
        return self._backend.writev(offset, bufs, fua and not self._faults.ignore_fua)

    def write(self, offset, data, fua: bool = False) -> int:
        return self.writev(offset, [data], fua)
