"""A recorded run: the base image, the host write log and the correlated request log.

:class:`Recording` builds the graph the crash engine needs around any
protocol node::

    BlockBackend(cache=…, request_log=CorrelatedRequestLog)   ← the device / workload
      └─ format (raw | qcow2)
          └─ RecordingNode  (host ops, dm-log-writes order)  ← the crash states
              └─ protocol (MemoryDriver, or the file)

and after the run hands the pieces to :class:`~.oracle.Oracle` and
:class:`~.checker.Checker`.  Guest-driven runs (``crashtest --kernel``) use
the persistent ``logwrites`` filter instead; :mod:`.runlog` converts either
into the same :class:`~.hostlog.HostLog`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backend import BlockBackend
from ..cachemode import CacheMode
from ..driver import BlockDriver
from ..memory import MemoryDriver
from .checker import Checker, SweepResult
from .hostlog import HostLog, RecordingNode
from .oracle import Oracle
from .states import CrashState, enumerate_states
from .timeline import CorrelatedRequestLog


def create_image(fmt: str, size: int, options: dict | None = None) -> bytes:
    """A fresh image of ``size`` guest bytes, as host bytes (in memory)."""
    node = MemoryDriver()
    if fmt == "raw":
        node.truncate(size)
    elif fmt == "qcow2":
        from ..qcow2.imagecreate import create_on_node
        create_on_node(node, size, dict(options or {}))
    else:
        raise ValueError(f"format {fmt}: crash recording supports raw or qcow2")
    return bytes(node.buf)


def open_format(node: BlockDriver, fmt: str, options: dict | None = None) -> BlockDriver:
    opts = dict(options or {})
    if fmt == "raw":
        from ..raw import RawDriver
        return RawDriver(node)
    from ..qcow2.driver import Qcow2Driver
    opts.setdefault("backing", None)
    return Qcow2Driver(node, options=opts)


@dataclass
class Recording:
    """Everything one crash sweep needs; ``backend`` is what the workload drives."""
    fmt: str
    base: bytes
    log: HostLog
    request_log: CorrelatedRequestLog
    backend: BlockBackend
    guest_claims: list = field(default_factory=list)

    @classmethod
    def in_memory(cls, fmt: str, size: int, cache: CacheMode | str = "writeback", *,
                  create_options: dict | None = None, open_options: dict | None = None,
                  base: bytes | None = None, **backend_kw) -> "Recording":
        if base is None:
            base = create_image(fmt, size, create_options)
        proto = MemoryDriver(base)
        log = HostLog()
        rec = RecordingNode(proto, log)
        root = open_format(rec, fmt, open_options)
        rlog = CorrelatedRequestLog(log)
        backend = BlockBackend(root, cache, request_log=rlog, **backend_kw)
        return cls(fmt, base, log, rlog, backend)

    def oracle(self) -> Oracle:
        return Oracle.from_request_log(self.request_log.entries, self.request_log.positions,
                                       len(self.log))

    def sweep(self, states: int | None = None, seed: int = 0, incremental: bool = True,
              oracle: Oracle | None = None) -> tuple[SweepResult, Oracle, list[CrashState]]:
        """Enumerate and check crash states (``states`` bounds their number)."""
        oracle = oracle or self.oracle()
        chosen = enumerate_states(self.log, states, seed)
        chk = Checker(self.base, self.log, oracle, self.fmt, seed, incremental)
        return chk.run(chosen), oracle, chosen
