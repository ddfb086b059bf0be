"""Guest RAM, mapped from a host mmap, and the one DMA bound check.

The RAM is an anonymous ``mmap`` handed to unicorn with ``mem_map_ptr``, so
the CPU and the devices see the same bytes: a device's DMA is a memoryview
slice of that mmap, and a ``preadv`` into it lands directly in guest memory
with no copy.

Every device access to guest memory goes through :meth:`GuestMemory.view`,
which checks the whole range against RAM.  An address or length outside RAM
raises :class:`DMAError`, which devices turn into a guest-visible error status
(a real bus would master-abort); it never escapes as a Python exception.

A device that is about to *write* a range (a read command's data, a SCRIPTS
store) says so (:meth:`GuestMemory.device_write_view`): the CPU's translations
of that range are dropped, so code the device writes runs as written, as on
hardware (unicorn does not see writes to the mmap; see
uc_direct.code_invalidator).
"""

from __future__ import annotations

import ctypes
import mmap
import struct

from .. import trace

PAGE = 4096


class DMAError(Exception):
    """A device tried to reach guest memory outside RAM (or with bus mastering off)."""

    def __init__(self, addr: int, length: int, why: str = "outside guest RAM"):
        super().__init__(f"DMA {addr:#x}+{length:#x} {why}")
        self.addr = addr
        self.length = length


def drop_no_code(addr: int, length: int) -> None:
    """The ``drop_code`` of memory no CPU executes from: nothing to drop."""


class GuestMemory:
    """Guest-physical RAM ``[0, size)``."""

    def __init__(self, size: int):
        if size <= 0 or size % (1 << 20):
            raise ValueError("RAM size must be a positive multiple of 1 MiB")
        self.size = size
        self.mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.buf = memoryview(self.mm)
        self.host_address = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        # drop_code(addr, length): forget translated code in that range; installed by
        # the CPU (machine/cpu.py), a no-op for memory no CPU executes from.
        self.drop_code = drop_no_code

    def map_into(self, uc) -> None:
        from unicorn import UC_PROT_ALL
        uc.mem_map_ptr(0, self.size, UC_PROT_ALL, self.host_address)

    # --- the one bound check ---------------------------------------------
    def contains(self, addr: int, length: int) -> bool:
        return 0 <= addr and 0 <= length and addr + length <= self.size

    def view(self, addr: int, length: int) -> memoryview:
        """A writable view of guest RAM ``[addr, addr+length)``; raises DMAError."""
        if addr < 0 or length < 0 or addr + length > self.size:
            if trace.enabled:
                trace.emit("dma.fault", addr=addr, length=length)
            raise DMAError(addr, length)
        return self.buf[addr:addr + length]

    def device_write_view(self, addr: int, length: int) -> memoryview:
        """:meth:`view` for a range the device will write: the CPU's translated code
        of it is dropped first.  Called when the transfer is set up; a guest that
        executes a buffer while a read into it is still in flight gets what
        hardware gives it (either contents)."""
        v = self.view(addr, length)
        self.drop_code(addr, length)
        return v

    # --- conveniences for device models and tests ------------------------
    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.view(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.view(addr, len(data))[:] = data

    def read_u16(self, addr: int) -> int:
        return struct.unpack_from("<H", self.view(addr, 2))[0]

    def read_u32(self, addr: int) -> int:
        return struct.unpack_from("<I", self.view(addr, 4))[0]

    def read_u64(self, addr: int) -> int:
        return struct.unpack_from("<Q", self.view(addr, 8))[0]

    def write_u16(self, addr: int, value: int) -> None:
        struct.pack_into("<H", self.view(addr, 2), 0, value & 0xFFFF)

    def write_u32(self, addr: int, value: int) -> None:
        struct.pack_into("<I", self.view(addr, 4), 0, value & 0xFFFFFFFF)

    def write_u64(self, addr: int, value: int) -> None:
        struct.pack_into("<Q", self.view(addr, 8), 0, value & 0xFFFFFFFFFFFFFFFF)

    def close(self) -> None:
        self.buf.release()
        try:
            self.mm.close()
        except BufferError:
            # A device still holds a view (e.g. in a traceback); the mapping
            # goes away with the last reference.
            pass
