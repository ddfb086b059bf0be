"""``blkdebug`` filter: inject an errno on named events (QEMU's block/blkdebug.c).

Configured as in QEMU, by the filename ``blkdebug:CONFIG:FILE`` where CONFIG
is a file of sections::

    # fail the second L2 table update with ENOSPC
    [set-state]
    event = "l2_update"
    state = "1"
    new_state = "2"

    [inject-error]
    event = "l2_update"
    state = "2"
    errno = "28"          # a number or a name: "ENOSPC"
    once = "on"

Semantics (as QEMU's):

- Format drivers raise events with ``self.file.debug_event("l2_update")``
  right before the matching metadata I/O; blkdebug raises the data-path
  events ``read``, ``write``, ``write_zeroes``, ``discard``, ``flush``
  (and ``flush_to_disk`` before a flush) itself for every request it gets.
- When an event fires, each ``[inject-error]`` rule for it whose ``state``
  matches the current state (0 or absent = any) becomes *active* (the first
  such rule in one event replaces the previously active set), and each
  ``[set-state]`` rule for it sets the next state.
- Every request checks the active rules: the first whose ``iotype`` mask
  includes the request's type and whose position lies in the request fails
  it with ``errno``.  ``once = "on"`` removes the rule after it fired;
  otherwise it stays active and keeps failing matching requests.
- Position: ``sector`` (512-byte units, QEMU) or ``offset`` (bytes) — the
  request must contain that byte; ``length`` (bytes, our extension) widens it
  to a range the request must overlap.  Absent: any request.
- ``iotype``: comma list of read, write, write-zeroes, discard, flush,
  block-status.  Default: all but block-status (QEMU) — except for rules on
  the data-path events, where it defaults to that event's own type (so
  ``event = "write"`` fails writes, not the reads after them).
- ``immediately`` is accepted for compatibility; requests are synchronous
  here, so every error is immediate.
"""

from __future__ import annotations

import errno as _errno
import re
import shlex
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .. import trace
from .driver import BlockDriver, BlockError, Buffer, Extent

# QEMU's BlkdebugEvent names (qapi/block-core.json) plus our data-path events.
QEMU_EVENTS = (
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
    "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
    "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
    "vmstate_load", "vmstate_save", "cow_read", "cow_write",
    "reftable_load", "reftable_grow", "reftable_update",
    "refblock_load", "refblock_update", "refblock_update_part", "refblock_alloc",
    "refblock_alloc_hookup", "refblock_alloc_write", "refblock_alloc_write_blocks",
    "refblock_alloc_write_table", "refblock_alloc_switch_table",
    "cluster_alloc", "cluster_alloc_bytes", "cluster_free",
    "flush_to_os", "flush_to_disk",
    "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
    "pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare",
    "l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space",
    "none",
)
DATA_EVENTS = ("read", "write", "write_zeroes", "discard", "flush")
# Raised by blockbed's qcow2 driver beyond QEMU's list: the start of an L2 allocation.
EXTRA_EVENTS = ("l2_alloc",)
EVENTS = frozenset(QEMU_EVENTS + DATA_EVENTS + EXTRA_EVENTS)

IOTYPES = ("read", "write", "write_zeroes", "discard", "flush", "block_status")
DEFAULT_IOTYPES = frozenset(IOTYPES) - {"block_status"}


def normalize_event(name: str) -> str:
    """``l2_alloc.write`` / ``l2-alloc-write`` → ``l2_alloc_write``."""
    return name.replace(".", "_").replace("-", "_")


def _parse_errno(value: str) -> int:
    if value.isdigit():
        n = int(value)
        if n <= 0:
            raise ValueError
        return n
    n = getattr(_errno, value.upper(), None)
    if not isinstance(n, int):
        raise ValueError
    return n


def _parse_bool(value: str) -> bool:
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise ValueError


@dataclass
class InjectError:
    """An ``[inject-error]`` rule."""
    event: str
    errno: int = _errno.EIO
    state: int = 0
    offset: int | None = None
    length: int = 1
    once: bool = False
    immediately: bool = False
    iotypes: frozenset[str] | None = None

    def __post_init__(self) -> None:
        self.event = normalize_event(self.event)
        if self.event not in EVENTS:
            raise ValueError(f"unknown event '{self.event}'")
        if self.iotypes is None:
            self.iotypes = frozenset({self.event}) if self.event in DATA_EVENTS \
                else DEFAULT_IOTYPES

    def matches(self, iotype: str, offset: int, length: int) -> bool:
        if iotype not in self.iotypes:  # type: ignore[operator]
            return False
        if self.offset is None:
            return True
        return offset < self.offset + self.length and self.offset < offset + length


@dataclass
class SetState:
    """A ``[set-state]`` rule: on ``event`` in ``state`` (0 = any), go to ``new_state``."""
    event: str
    new_state: int
    state: int = 0

    def __post_init__(self) -> None:
        self.event = normalize_event(self.event)
        if self.event not in EVENTS:
            raise ValueError(f"unknown event '{self.event}'")


Rule = InjectError | SetState

_SECTION_KEYS = {
    "inject-error": {"event", "errno", "state", "sector", "offset", "length", "once",
                     "immediately", "iotype"},
    "set-state": {"event", "state", "new_state"},
}


def parse_config(text: str, source: str = "blkdebug config") -> list[Rule]:
    """Parse QEMU's blkdebug config syntax; errors name the line and the allowed values."""
    sections: list[tuple[int, str, dict[str, str]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[\s*([A-Za-z_-]+)\s*\]", line)
        if m:
            name = m.group(1)
            if name not in _SECTION_KEYS:
                raise ValueError(f"{source} line {lineno}: unknown section [{name}]; allowed: "
                                 f"{', '.join('[' + s + ']' for s in _SECTION_KEYS)}")
            sections.append((lineno, name, {}))
            continue
        m = re.fullmatch(r"([A-Za-z_-]+)\s*=\s*(.*)", line)
        if not m or not sections:
            raise ValueError(f"{source} line {lineno}: expected [section] or key = \"value\"")
        key, value = m.group(1), m.group(2).strip()
        try:
            parts = shlex.split(value, comments=True)
        except ValueError:
            raise ValueError(f"{source} line {lineno}: bad quoting in {value!r}") from None
        value = parts[0] if parts else ""
        sec = sections[-1]
        if key not in _SECTION_KEYS[sec[1]]:
            raise ValueError(f"{source} line {lineno}: unknown key '{key}' in [{sec[1]}]; "
                             f"allowed: {', '.join(sorted(_SECTION_KEYS[sec[1]]))}")
        sec[2][key] = value
    rules: list[Rule] = []
    for lineno, name, kv in sections:
        where = f"{source} section [{name}] at line {lineno}"
        if "event" not in kv:
            raise ValueError(f"{where}: 'event' is required")
        ev = normalize_event(kv["event"])
        if ev not in EVENTS:
            raise ValueError(f"{where}: unknown event '{kv['event']}'; allowed: "
                             f"{', '.join(sorted(EVENTS))}")
        try:
            state = int(kv.get("state", "0"))
        except ValueError:
            raise ValueError(f"{where}: state={kv['state']}: not an integer") from None
        if name == "set-state":
            if "new_state" not in kv:
                raise ValueError(f"{where}: 'new_state' is required")
            try:
                rules.append(SetState(ev, int(kv["new_state"]), state))
            except ValueError:
                raise ValueError(f"{where}: new_state={kv['new_state']}: not an integer") from None
            continue
        rule = InjectError(ev, state=state)
        if "errno" in kv:
            try:
                rule.errno = _parse_errno(kv["errno"])
            except ValueError:
                raise ValueError(f"{where}: errno={kv['errno']}: expected a positive number "
                                 "or a name such as EIO, ENOSPC") from None
        for key in ("once", "immediately"):
            if key in kv:
                try:
                    setattr(rule, key, _parse_bool(kv[key]))
                except ValueError:
                    raise ValueError(f"{where}: {key}={kv[key]}: invalid value; allowed: "
                                     "on, off") from None
        try:
            if "sector" in kv and int(kv["sector"]) >= 0:
                rule.offset = int(kv["sector"]) * 512
            if "offset" in kv:
                rule.offset = int(kv["offset"])
            if "length" in kv:
                rule.length = int(kv["length"])
        except ValueError:
            raise ValueError(f"{where}: sector/offset/length must be integers") from None
        if "iotype" in kv:
            types = {t.strip().replace("-", "_") for t in kv["iotype"].split(",") if t.strip()}
            bad = types - set(IOTYPES)
            if bad or not types:
                raise ValueError(f"{where}: iotype={kv['iotype']}: invalid value; allowed: "
                                 f"{', '.join(t.replace('_', '-') for t in IOTYPES)}")
            rule.iotypes = frozenset(types)
        rules.append(rule)
    return rules


class BlkdebugDriver(BlockDriver):
    """The filter node.  ``config``: path of a config file, or None; ``rules``: Python rules."""

    driver_name = "blkdebug"

    def __init__(self, file: BlockDriver, config: str | None = None,
                 rules: Iterable[Rule] = ()):
        self.file = file
        self.read_only = file.read_only
        self.supports_fua = file.supports_fua
        self.rules: list[Rule] = []
        if config:
            try:
                with open(config, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as e:
                raise BlockError(e.errno or _errno.EIO,
                                 f"blkdebug: cannot read config '{config}': {e.strerror}") from None
            try:
                self.rules.extend(parse_config(text, f"blkdebug config '{config}'"))
            except ValueError as e:
                raise BlockError(_errno.EINVAL, str(e)) from None
        self.rules.extend(rules)
        self.state = 1
        self.active: list[InjectError] = []
        self.injected: list[tuple[str, str, int, int, int]] = []  # (event/iotype, …) history

    def children(self) -> Sequence[BlockDriver]:
        return (self.file,)

    def add_rule(self, rule: Rule) -> None:
        self.rules.append(rule)

    # --- events ----------------------------------------------------------------
    def debug_event(self, name: str) -> None:
        """Process rules for ``name``; not passed further down (as in QEMU)."""
        name = normalize_event(name)
        if trace.enabled:
            trace.emit("blkdebug.event", event=name, state=self.state)
        new_state = self.state
        injected = False
        for rule in self.rules:
            if rule.event != name or (rule.state and rule.state != self.state):
                continue
            if isinstance(rule, InjectError):
                if not injected:
                    self.active = []
                    injected = True
                self.active.insert(0, rule)
            else:
                new_state = rule.new_state
        self.state = new_state

    def _check(self, iotype: str, offset: int, length: int) -> None:
        for rule in self.active:
            if rule.matches(iotype, offset, length):
                break
        else:
            return
        if rule.once:
            self.active = [r for r in self.active if r is not rule]
            self.rules = [r for r in self.rules if r is not rule]
        self.injected.append((rule.event, iotype, offset, length, rule.errno))
        if trace.enabled:
            trace.emit("blkdebug.inject", event=rule.event, iotype=iotype, offset=offset,
                       length=length, errno=rule.errno)
        name = _errno.errorcode.get(rule.errno, str(rule.errno))
        raise BlockError(rule.errno, f"blkdebug: injected {name} on {iotype} at offset "
                                     f"{offset} (event {rule.event})")

    def _request(self, iotype: str, offset: int, length: int) -> None:
        if self.rules:
            self.debug_event(iotype)
        if self.active:
            self._check(iotype, offset, length)

    # --- data path -------------------------------------------------------------------
    def read(self, offset: int, buf: memoryview) -> None:
        self._request("read", offset, len(buf))
        self.file.read(offset, buf)

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self._request("read", offset, sum(len(b) for b in bufs))
        self.file.readv(offset, bufs)

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        self._request("write", offset, len(data))
        self.file.write(offset, data, fua)

    def writev(self, offset: int, bufs: Sequence[Buffer], fua: bool = False) -> None:
        self._request("write", offset, sum(len(b) for b in bufs))
        self.file.writev(offset, bufs, fua)

    def flush(self) -> None:
        if self.rules:
            self.debug_event("flush_to_disk")
        self._request("flush", 0, 0)
        self.file.flush()

    def discard(self, offset: int, length: int) -> None:
        self._request("discard", offset, length)
        self.file.discard(offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        self._request("write_zeroes", offset, length)
        self.file.write_zeroes(offset, length, may_unmap)

    def block_status(self, offset: int, length: int) -> list[Extent]:
        if self.active:
            self._check("block_status", offset, length)
        return self.file.block_status(offset, length)

    def length(self) -> int:
        return self.file.length()

    def truncate(self, length: int) -> None:
        self.file.truncate(length)
