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
