"""The legacy virtio-pci interface: the I/O BAR0 register block (virtio 1.2 §4.1.4.8).

A transitional device (QEMU's pc default ``-device virtio-blk-pci``) and a
legacy-only one (``disable-modern=on``) carry, in I/O BAR0, the virtio
0.9.5 header declared in :data:`.layout.LegacyCfg` — host features, guest
features, queue PFN, queue size, queue select, queue notify, device status,
ISR — then, only while MSI-X is enabled, the configuration and queue MSI-X
vectors (:data:`.layout.LegacyMsix`), then the device configuration.

Behaviour, as QEMU 7.2's ``virtio_ioport_read``/``virtio_ioport_write`` and
``virtio_pci_config_read``/``write``:

- only the low 32 feature bits are visible, plus the legacy transport bits
  QEMU 7.2 shows there (read from it, ``test_legacy_registers_match_qemu``):
  NOTIFY_ON_EMPTY (24), BAD_FEATURE (30) and, on a transitional device,
  ANY_LAYOUT (27).  Writing guest features takes them at once (there is no
  FEATURES_OK in 0.9.5), masked to that offer, and is ignored once
  FEATURES_OK is set; a write with BAD_FEATURE means a driver that accepts
  whatever is offered: it gets no features;
- FEATURES_OK written by a driver without VERSION_1 is kept as written
  (QEMU validates only VERSION_1 drivers) and freezes the guest features;
- the queue size is read-only (the device's maximum);
- a queue PFN names 4096-byte pages; the rings follow the legacy layout
  (:func:`.layout.legacy_rings`: used ring aligned to 4096).  Writing 0
  resets the whole device, as in QEMU;
- writing status ACKNOWLEDGE|DRIVER also sets the PCI bus-master bit
  (QEMU's workaround for Linux before 2.6.34, which used DMA without it);
- register accesses are decoded by offset whatever their width (the value
  is truncated to the access); offsets inside a register read all ones and
  writes to them are ignored.

Every guest-written value is validated in :meth:`LegacyRegs.write` (the one
place): vector values are range-checked (queue select is checked where it is
used), and a PFN is
mapped at once through :meth:`~.virtqueue.SplitQueue.start` — a ring
outside RAM puts the device in DEVICE_NEEDS_RESET (§2.1.2), never raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import trace
from ...machine.pci import CMD_BUS_MASTER, COMMAND, PCIDevice
from . import layout as L
from .virtqueue import QueueError

if TYPE_CHECKING:
    from .pci import VirtioPCIDevice

F_NOTIFY_ON_EMPTY, F_ANY_LAYOUT, F_BAD_FEATURE = 24, 27, 30
_STATUS = L.DeviceStatus.flags
ACK_DRIVER = _STATUS["ACKNOWLEDGE"] | _STATUS["DRIVER"]
FEATURES_OK = _STATUS["FEATURES_OK"]
FIELDS = L.LEGACY_FIELDS
NO_VECTOR = 0xFFFF


def bar_size(config_size: int) -> int:
    """The I/O BAR0 size: the header with the MSI-X part plus the device
    configuration, rounded up to a power of two (QEMU: 128 for virtio-blk)."""
    n = L.LEGACY_SIZE + L.LEGACY_MSIX_SIZE + config_size
    return 1 << (n - 1).bit_length()


class LegacyRegs:
    """The BAR0 region handler of one transitional or legacy-only function."""

    __slots__ = ("dev",)

    def __init__(self, dev: "VirtioPCIDevice"):
        self.dev = dev

    def host_features(self) -> int:
        """The HOST_FEATURES register: the low half of the offer plus the legacy bits.
        (QEMU's legacy-only virtio-blk also shows SCSI (7); blockbed has no SCSI
        pass-through, so it does not.)"""
        dev = self.dev
        extra = (1 << F_NOTIFY_ON_EMPTY) | (1 << F_BAD_FEATURE)
        if dev.transport == "transitional":
            extra |= 1 << F_ANY_LAYOUT      # QEMU clears it when VERSION_1 is not offered
        return (dev.offered_features & 0xFFFFFFFF) | extra

    def accepted_features(self) -> int:
        """What a legacy driver may get: the host features without BAD_FEATURE."""
        return self.host_features() & ~(1 << F_BAD_FEATURE)

    def _config_offset(self) -> int:
        msix = self.dev.msix
        return L.LEGACY_SIZE + (L.LEGACY_MSIX_SIZE if msix is not None and msix.enabled else 0)

    # --- reads ----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        dev = self.dev
        cfg = self._config_offset()
        if offset >= cfg:
            return dev._devcfg_read(offset - cfg, size)
        f = FIELDS.get(offset)
        if f is None:
            return (1 << (8 * size)) - 1
        name = f[0]
        q = dev._queue()
        if name == "host_features":
            v = self.host_features()
        elif name == "guest_features":
            v = dev.driver_features & 0xFFFFFFFF
        elif name == "queue_pfn":
            v = q.desc_addr >> L.LEGACY_PFN_SHIFT if q is not None and q.enabled else 0
        elif name == "queue_num":
            v = q.size if q is not None else 0
        elif name == "queue_sel":
            v = dev.queue_select
        elif name == "queue_notify":
            v = 0
        elif name == "device_status":
            v = dev.status
        elif name == "isr":
            v = dev._isr_read(0, 1)
        elif name == "config_msix_vector":
            v = dev.config_msix_vector
        else:                           # queue_msix_vector
            v = q.msix_vector if q is not None else NO_VECTOR
        return v & ((1 << (8 * size)) - 1)

    # --- writes: the one place that validates legacy register values --------------------------
    def write(self, offset: int, size: int, value: int) -> None:
        dev = self.dev
        cfg = self._config_offset()
        if offset >= cfg:
            dev._devcfg_write(offset - cfg, size, value)
            return
        f = FIELDS.get(offset)
        if f is None:
            if trace.enabled:
                trace.emit("virtio.bad_legacy_write", dev=dev.name, offset=offset, size=size)
            return
        name = f[0]
        value &= (1 << (8 * min(size, f[1]))) - 1
        if trace.enabled:
            trace.emit("virtio.legacy_write", dev=dev.name, field=name, value=value)
        q = dev._queue()
        if name == "guest_features":
            self._guest_features(value)
        elif name == "queue_pfn":
            if value == 0:
                dev.reset()             # QEMU: a zero PFN resets the device
            elif q is not None:
                self._queue_pfn(value)
        elif name == "queue_sel":
            dev.queue_select = value
        elif name == "queue_notify":
            dev._notify(value)
        elif name == "device_status":
            dev._set_status(value)
            if value == ACK_DRIVER and dev.machine is not None:
                PCIDevice.config_write(dev, COMMAND, 2, dev.command | CMD_BUS_MASTER)
        elif name == "config_msix_vector":
            dev.config_msix_vector = value if value < dev.msix_vectors else NO_VECTOR
        elif name == "queue_msix_vector" and q is not None:
            q.msix_vector = value if value < dev.msix_vectors else NO_VECTOR
        # host_features, queue_num and isr are read-only

    def _guest_features(self, value: int) -> None:
        dev = self.dev
        if dev.status & FEATURES_OK:    # FEATURES_OK: frozen (QEMU virtio_set_features)
            return
        if value >> F_BAD_FEATURE & 1:
            value = 0                   # "does not negotiate properly: assume nothing"
        value &= self.accepted_features()
        dev.driver_features = value
        dev._features_taken(value)

    def _queue_pfn(self, pfn: int) -> None:
        dev = self.dev
        q = dev._queue()
        vector = q.msix_vector
        q.reset()                       # a new ring: indices from 0, old completions dropped
        q.msix_vector = vector
        dev._queue_features(q)
        q.desc_addr, q.driver_addr, q.device_addr = L.legacy_rings(pfn << L.LEGACY_PFN_SHIFT,
                                                                   q.size)
        q.enabled = True
        try:
            q.ram = dev.machine.memory.buf
            q.drop_code = dev.machine.memory.drop_code
            q.start()                   # maps the rings: RAM bounds and size checked there
        except QueueError as e:
            dev.fail(f"legacy queue PFN {pfn:#x}: {e}")
