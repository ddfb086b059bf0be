"""The crash-consistency engine (docs/crash-consistency.md).

guest workload → BlockBackend request log (:mod:`.timeline`, the oracle's
input) → format driver → host write log (:mod:`.hostlog`, dm-log-writes
order) → file.  :mod:`.states` enumerates crash states over the host log,
:mod:`.overlay` builds each one in memory on the base image,
:mod:`.oracle` says which guest writes must have survived, :mod:`.checker`
opens the state with our drivers and checks both, :mod:`.qemucheck` has
``qemu-img check`` confirm a sample, :mod:`.guestrecord` ties in the guest's
own record of promises.
"""

from .checker import Checker, SweepResult, Violation
from .hostlog import HostLog, HostOp, OpKind, RecordingNode
from .oracle import Oracle
from .states import CrashState, enumerate_states
from .timeline import CorrelatedRequestLog

__all__ = ["Checker", "SweepResult", "Violation", "HostLog", "HostOp", "OpKind", "RecordingNode",
           "Oracle", "CrashState", "enumerate_states", "CorrelatedRequestLog"]
