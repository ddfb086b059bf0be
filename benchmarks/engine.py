#!/usr/bin/env python3
"""What the CPU engine itself costs: bare unicorn, no machine, no device.

Three measurements that bound every guest workload (docs/performance.md):

- a loop of register instructions (``nop``) against the same loop with one
  32-bit store to a RAM page that holds no code: unicorn 2.1.4 sends every
  guest store down its slow path (``notdirty_write``: it never marks a RAM page
  dirty, so each store looks for translated code to invalidate); unicorn's
  pull request 2337 (merged 2026-05, not in a release yet) fixes it;
- ``emu_start`` of a two-instruction slice with and without unicorn's
  ``timeout`` (a thread per call; the machine keeps its deadline in one
  thread, machine/watchdog.py);
- the cost of dropping translated code for a range a device writes
  (``tb_invalidate_phys_range`` through ctypes, uc_direct.code_invalidator).

Run: ``python benchmarks/engine.py``.  No QEMU is involved: these are the
engine's own numbers, the ceiling under every blockbed-vs-QEMU ratio.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc  # noqa: E402
from unicorn.x86_const import UC_X86_REG_RCX, UC_X86_REG_RSP  # noqa: E402

from blockbed.machine.uc_direct import code_invalidator  # noqa: E402

CODE, DATA = 0x1000, 0x100000
LOOP = 5_000_000
# mov [rsp+8], eax / four nops; dec ecx; jnz back; hlt
STORE_LOOP = bytes([0x89, 0x44, 0x24, 0x08, 0xFF, 0xC9, 0x75, 0xF8, 0xF4])
NOP_LOOP = bytes([0x90, 0x90, 0x90, 0x90, 0xFF, 0xC9, 0x75, 0xF8, 0xF4])


def _engine() -> tuple[Uc, mmap.mmap]:
    ram = mmap.mmap(-1, 2 << 20)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map_ptr(0, len(ram), UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
    return uc, ram


def loop_ns(code: bytes) -> float:
    uc, ram = _engine()
    ram[CODE:CODE + len(code)] = code
    uc.reg_write(UC_X86_REG_RSP, DATA + 0x8000)
    uc.reg_write(UC_X86_REG_RCX, LOOP)
    t = time.perf_counter()
    uc.emu_start(CODE, CODE + len(code) - 1)
    return (time.perf_counter() - t) / LOOP * 1e9


def slice_us(timeout_us: int, n: int = 2000) -> float:
    uc, ram = _engine()
    ram[CODE:CODE + 2] = b"\x90\xf4"
    t = time.perf_counter()
    for _ in range(n):
        uc.emu_start(CODE, CODE + 1, timeout_us)
    return (time.perf_counter() - t) / n * 1e6


def drop_us(length: int, n: int = 100_000) -> float | None:
    uc, _ram = _engine()
    drop = code_invalidator(uc)
    if drop is None:
        return None
    t = time.perf_counter()
    for _ in range(n):
        drop(DATA, length)
    return (time.perf_counter() - t) / n * 1e6


def main() -> int:
    import unicorn
    print(f"unicorn {unicorn.__version__}, best of 3")
    nop = min(loop_ns(NOP_LOOP) for _ in range(3))
    store = min(loop_ns(STORE_LOOP) for _ in range(3))
    print(f"loop iteration, 4 nops:           {nop:8.1f} ns")
    print(f"loop iteration, one RAM store:    {store:8.1f} ns  ({store / nop:.0f}x)")
    plain = min(slice_us(0) for _ in range(3))
    timed = min(slice_us(10_000_000) for _ in range(3))
    print(f"emu_start, no timeout:            {plain:8.1f} us")
    print(f"emu_start, with a timeout:        {timed:8.1f} us  (a thread per call)")
    for length in (4096, 65536):
        d = drop_us(length)
        print(f"drop translated code, {length // 1024:3d} KiB:    "
              + ("   n/a (libunicorn does not export it)" if d is None else f"{d:8.2f} us"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
