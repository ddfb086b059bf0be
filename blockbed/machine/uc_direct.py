"""Unicorn through ctypes: callbacks without the Python binding's wrappers, and the
C structures of its batched register access.

The binding (unicorn 2.1.4, ``unicorn_py3``) calls every hook through two Python
frames of its own: ``uccallback``'s exception guard, then a per-hook-type adapter
that swaps the engine handle for the ``Uc`` object.  For an exit that does little
(a port write, an MMIO register read) those frames cost more than the handler:
measured on bare unicorn with do-nothing handlers, 2.5 M exits/s through the
binding against 5.6 M with the C function pointer calling the handler directly.

So the machine's hot hooks (port IN/OUT, MMIO chunks) are plain ctypes function
pointers around our own functions, which take the engine handle as their first
argument (and ignore it) and carry their own exception guard (:func:`record`):
an exception raised in a device model is stored where the binding stores its own,
and ``Uc.emu_start`` raises it after the slice exactly as before.
"""

from __future__ import annotations

import ctypes
from typing import Callable

from unicorn import Uc, UcError
from unicorn import unicorn_const as uc_const
from unicorn.unicorn_py3.arch import intel
from unicorn.unicorn_py3.unicorn import MMIO_READ_CFUNC, MMIO_WRITE_CFUNC, uclib

class Msr(ctypes.Structure):
    """unicorn's ``uc_x86_msr``: the value of UC_X86_REG_MSR in batched access."""
    _fields_ = [("rid", ctypes.c_uint32), ("value", ctypes.c_uint64)]


class Mmr(ctypes.Structure):
    """unicorn's ``uc_x86_mmr``: a segment or descriptor-table register."""
    _fields_ = [("selector", ctypes.c_uint16), ("base", ctypes.c_uint64),
                ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


IN_CFUNC = intel.HOOK_INSN_IN_CFUNC      # (handle, port, size, user_data) -> uint32
OUT_CFUNC = intel.HOOK_INSN_OUT_CFUNC    # (handle, port, size, value, user_data)


def record(uc: Uc, exc: BaseException) -> None:
    """What the binding's guard does with an exception raised in a hook: keep the
    first one for ``emu_start`` to raise, and stop the emulation."""
    if uc._hook_exception is None:
        uc._hook_exception = exc
    uc.emu_stop()


def hook_insn(uc: Uc, insn: int, cfunctype, fn: Callable) -> int:
    """Hook the instruction ``insn`` (UC_X86_INS_*) with ``fn`` called directly."""
    fptr = cfunctype(fn)
    return uc._Uc__do_hook_add(uc_const.UC_HOOK_INSN, fptr, 1, 0, insn)


def mmio_map(uc: Uc, base: int, size: int, read: Callable, write: Callable) -> None:
    """``Uc.mmio_map`` with ``read(handle, offset, size, ud)`` and
    ``write(handle, offset, size, value, ud)`` called directly.  The function
    pointers are kept where the binding keeps its own, so ``Uc.mem_unmap`` drops
    them the same way."""
    rd, wr = MMIO_READ_CFUNC(read), MMIO_WRITE_CFUNC(write)
    status = uclib.uc_mmio_map(uc._uch, base, size, rd, None, wr, None)
    if status != uc_const.UC_ERR_OK:
        raise UcError(status)
    uc._mmio_callbacks[(base, base + size)] = (rd, wr)


def code_invalidator(uc: Uc) -> Callable[[int, int], None] | None:
    """``drop(addr, length)``: discard what unicorn translated from guest-physical
    RAM ``[addr, addr+length)``, or None when this libunicorn does not export it.

    A device's DMA writes the RAM mmap directly, past unicorn, so unicorn cannot see
    it and keeps running its old translation of the bytes it replaced; QEMU drops
    them in its DMA write path (``invalidate_and_set_dirty``).  The binding's
    ``ctl_remove_cache`` takes a *virtual* address, translated through the guest's
    current page tables (wrong under Linux's, where RAM is not identity mapped), so
    this calls QEMU's ``tb_invalidate_phys_range``, exported by libunicorn, with RAM
    offsets.  Guest RAM is the engine's first and only RAM block, mapped at
    guest-physical 0 (GuestMemory.map_into, before any other mapping), so its RAM
    offsets are its guest-physical addresses.  About 1 us a call."""
    fn = getattr(uclib, "tb_invalidate_phys_range_x86_64", None)
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)
    fn.restype = None
    handle = uc._uch

    def drop(addr: int, length: int) -> None:
        fn(handle, addr, addr + length)

    return drop
