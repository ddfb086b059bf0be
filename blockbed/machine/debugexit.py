"""isa-debug-exit at 0xF4 (4 ports): a guest write ends the run with that value.

QEMU's device makes the process exit with ``(value << 1) | 1``; blockbed exits
with the value itself, and the differential harness decodes QEMU's encoding.
"""

from __future__ import annotations

from typing import Callable


class DebugExit:
    def __init__(self, on_exit: Callable[[int], None]):
        self.on_exit = on_exit

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.on_exit(value & ((1 << (8 * size)) - 1))
