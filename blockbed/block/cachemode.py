"""QEMU's ``cache=`` modes as the three switches they stand for.

semantics.md, "QEMU cache modes" (from qemu-options.hx, ``-drive cache=``):

=============  ==========================  ======================  ================
cache=         cache.writeback (WCE)       cache.direct (O_DIRECT) cache.no-flush
=============  ==========================  ======================  ================
writeback      on                          off                     off
none           on                          on                      off
writethrough   off                         off                     off
directsync     off                         on                      off
unsafe         on                          off                     on
=============  ==========================  ======================  ================

``writeback`` is only the *initial* guest-visible write cache state (WCE); the
guest may change it later and the :class:`~blockbed.block.backend.BlockBackend`
keeps the live value.  ``direct`` is applied by the file protocol driver at
open (``O_DIRECT``).  ``no_flush`` makes the backend drop every flush (and
every FUA), so nothing the guest does reaches ``fdatasync``: the negative
control of the crash checker.
"""

from __future__ import annotations

import enum


class CacheMode(enum.Enum):
    """One of the five ``cache=`` modes; ``.writeback``, ``.direct``, ``.no_flush`` are its switches."""

    WRITEBACK = ("writeback", True, False, False)
    NONE = ("none", True, True, False)
    WRITETHROUGH = ("writethrough", False, False, False)
    DIRECTSYNC = ("directsync", False, True, False)
    UNSAFE = ("unsafe", True, False, True)

    def __init__(self, qemu_name: str, writeback: bool, direct: bool, no_flush: bool):
        self.qemu_name = qemu_name
        self.writeback = writeback
        self.direct = direct
        self.no_flush = no_flush

    def __str__(self) -> str:
        return self.qemu_name

    @classmethod
    def names(cls) -> list[str]:
        return [m.qemu_name for m in cls]

    @classmethod
    def parse(cls, value: "CacheMode | str") -> "CacheMode":
        """``"none"`` → ``CacheMode.NONE``; a CacheMode passes through.

        Raises ``ValueError`` naming the allowed values.
        """
        if isinstance(value, CacheMode):
            return value
        for m in cls:
            if m.qemu_name == value:
                return m
        raise ValueError(f"cache={value}: invalid value; allowed: {', '.join(cls.names())}")

    @classmethod
    def from_switches(cls, writeback: bool, direct: bool, no_flush: bool) -> "CacheMode":
        """The mode for ``cache.writeback=…,cache.direct=…,cache.no-flush=…``.

        QEMU accepts any combination; the five named modes cover all but
        ``no-flush`` together with ``direct`` or with writeback off, which we
        refuse (ValueError) rather than invent a sixth mode.
        """
        for m in cls:
            if (m.writeback, m.direct, m.no_flush) == (writeback, direct, no_flush):
                return m
        raise ValueError("cache.no-flush=on is only supported together with "
                         "cache.writeback=on,cache.direct=off (cache=unsafe)")
