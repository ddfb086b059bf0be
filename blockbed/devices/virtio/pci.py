"""The virtio-pci transport (virtio 1.2 §4.1), device side.

Three variants (``transport=``), as QEMU 7.2 builds ``virtio-*-pci``:

- ``modern`` (``disable-legacy=on``): device ID 0x1040 + type, revision 1;
- ``transitional`` (QEMU's pc default): device ID 0x1000 + type − 1,
  revision 0, subsystem ID = the device type, the legacy I/O BAR0
  (:mod:`.legacy`, §4.1.4.8) next to everything below;
- ``legacy`` (``disable-modern=on``): the transitional IDs, BAR0 and the
  MSI-X BAR only — no BAR4, no vendor capabilities, no VERSION_1.

Layout of the modern interface, as QEMU 7.2 lays it out:

- BAR1, 32-bit memory, 4 KiB: the MSI-X table at 0 and the PBA at 0x800
  (one vector per queue plus one for configuration changes);
- BAR4, 64-bit prefetchable memory, 16 KiB: common configuration at
  0x0000, ISR status at 0x1000, device configuration at 0x2000,
  notifications at 0x3000 (``notify_off_multiplier`` 4, queue *n* at
  0x3000 + 4n);
- vendor-specific capabilities (§4.1.4) describing those four regions plus
  the VIRTIO_PCI_CAP_PCI_CFG window (§4.1.4.9), then the MSI-X capability.

Device status (§2.1), reset (§2.4), feature negotiation with the
FEATURES_OK handshake (§3.1.1: FEATURES_OK sticks only if the driver's
features are a subset of the offer and include VIRTIO_F_VERSION_1) and the
queue registers live here; a subclass (the block device) supplies its
feature bits, its configuration bytes and what a queue notification does.

A guest that breaks the ring rules (:class:`~.virtqueue.QueueError`) gets
DEVICE_NEEDS_RESET plus a configuration-change notification (§2.1.2); the
queue is not touched again until the driver resets the device.  Before
DRIVER_OK no buffer is consumed (§2.1.2, §3.1.1): notifications are ignored.
"""

from __future__ import annotations

from ... import trace
from ...machine.pci import CAP_VENDOR, CMD_BUS_MASTER, BarKind, PCIDevice, SubRegions
from . import layout as L
from .legacy import F_NOTIFY_ON_EMPTY, LegacyRegs, bar_size as legacy_bar_size
from .virtqueue import QueueError, SplitQueue

# Device status bits (§2.1)
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
DEVICE_NEEDS_RESET, FAILED = 0x40, 0x80
NO_VECTOR = 0xFFFF

# Transport feature bits (§6)
F_RING_INDIRECT_DESC = 28
F_RING_EVENT_IDX = 29
F_VERSION_1 = 32
F_RING_RESET = 40
TRANSPORT_FEATURES = (1 << F_RING_INDIRECT_DESC) | (1 << F_RING_EVENT_IDX) | \
    (1 << F_VERSION_1) | (1 << F_RING_RESET)

#: legacy-only (QEMU disable-modern=on): no VERSION_1, no RING_RESET (modern-only bits)
LEGACY_TRANSPORT_FEATURES = (1 << F_RING_INDIRECT_DESC) | (1 << F_RING_EVENT_IDX)
#: "modern" (disable-legacy=on), "transitional" (both interfaces), "legacy" (disable-modern=on)
TRANSPORTS = ("modern", "transitional", "legacy")

# Capability cfg_type values (§4.1.4)
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG = 1, 2, 3, 4, 5

# BAR4 layout
COMMON_OFF, ISR_OFF, DEVICE_OFF, NOTIFY_OFF = 0x0000, 0x1000, 0x2000, 0x3000
REGION = 0x1000
NOTIFY_MULT = 4
MODERN_BAR, MSIX_BAR, LEGACY_BAR = 4, 1, 0
MSIX_PBA_OFF = 0x800

# struct virtio_pci_common_cfg (§4.1.4.3): offset -> (name, size), from .layout.CommonCfg
COMMON_FIELDS: dict[int, tuple[str, int]] = L.COMMON_FIELDS
COMMON_SIZE = L.COMMON_CFG_SIZE


class VirtioPCIDevice(PCIDevice):
    """A virtio PCI function: modern-only (default), transitional or legacy-only
    (``transport``, see :data:`TRANSPORTS`).  Subclasses set ``virtio_device_id``,
    ``device_config_size`` and implement the ``device_*`` hooks."""

    vendor_id = 0x1AF4
    subsystem_vendor_id = 0x1AF4
    subsystem_id = 0x1100           # QEMU's PCI_SUBDEVICE_ID_QEMU
    revision = 1                    # §4.1.2.1: modern devices have revision >= 1
    interrupt_pin = 1
    virtio_device_id = 0

    #: bytes of device configuration (sizes the legacy I/O BAR)
    device_config_size = 0

    def __init__(self, num_queues: int, queue_size: int, transport: str = "modern"):
        if transport not in TRANSPORTS:
            raise ValueError(f"virtio transport '{transport}': expected {', '.join(TRANSPORTS)}")
        self.transport = transport
        if transport == "modern":
            self.device_id = 0x1040 + self.virtio_device_id
        else:
            # §4.1.2.1: transitional IDs 0x1000..0x103f, revision 0, subsystem = device type
            self.device_id = 0x1000 + self.virtio_device_id - 1
            self.subsystem_id = self.virtio_device_id
            self.revision = 0
        super().__init__()
        self.num_queues = num_queues
        # Rings and buffers are reached through the RAM bound check alone: bus
        # mastering is checked once per notification (_notify_write), not per descriptor.
        self.queues = [SplitQueue(i, queue_size, self._ram_view) for i in range(num_queues)]
        self.msix_vectors = num_queues + 1
        # Transport state
        self.status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.features = 0               # negotiated (valid once FEATURES_OK)
        self.config_msix_vector = NO_VECTOR
        self.config_generation = 0
        self.queue_select = 0
        self.isr = 0
        self.queue_reset_done: set[int] = set()
        self.broken: str | None = None  # why DEVICE_NEEDS_RESET was set
        self.internal_errors = 0
        self.notifies = 0
        self.interrupts = 0

        self.pci_cfg_cap: int | None = None
        self.legacy: LegacyRegs | None = None
        if transport != "modern":
            self.legacy = LegacyRegs(self)
            self.add_bar(LEGACY_BAR, legacy_bar_size(self.device_config_size), BarKind.IO,
                         self.legacy, name=f"{self.name}.legacy")
        if transport != "legacy":
            self._add_modern()
        msix_regions = SubRegions()
        self.add_bar(MSIX_BAR, 0x1000, BarKind.MEM32, msix_regions, name=f"{self.name}.msix")
        self.add_msix(self.msix_vectors, MSIX_BAR, 0, MSIX_BAR, MSIX_PBA_OFF)
        msix_regions.add(0, 16 * self.msix_vectors, self.msix.table_region)
        msix_regions.add(MSIX_PBA_OFF, 8 * ((self.msix_vectors + 63) // 64), self.msix.pba_region)

    def _add_modern(self) -> None:
        """BAR4 and the vendor capabilities of the modern interface (§4.1.4)."""
        modern = SubRegions()
        modern.add(COMMON_OFF, REGION, _Handler(self._common_read, self._common_write))
        modern.add(ISR_OFF, REGION, _Handler(self._isr_read, _ignore))
        modern.add(DEVICE_OFF, REGION, _Handler(self._devcfg_read, self._devcfg_write))
        modern.add(NOTIFY_OFF, REGION, _Handler(_ones, self._notify_write))
        self.add_bar(MODERN_BAR, 0x4000, BarKind.MEM64, modern, prefetchable=True,
                     name=f"{self.name}.modern")
        for cfg_type, off in ((CAP_COMMON, COMMON_OFF), (CAP_ISR, ISR_OFF),
                              (CAP_DEVICE, DEVICE_OFF)):
            self._add_virtio_cap(cfg_type, MODERN_BAR, off, REGION)
        self._add_virtio_cap(CAP_NOTIFY, MODERN_BAR, NOTIFY_OFF, REGION, extra=NOTIFY_MULT)
        self.pci_cfg_cap = self._add_virtio_cap(CAP_PCI_CFG, 0, 0, 0, extra=0)
        # cap.bar, cap.offset, cap.length and pci_cfg_data are driver-writable (§4.1.4.9)
        c = self.pci_cfg_cap
        self.wmask[c + L.CAP_OFF_BAR] = 0xFF
        self.wmask[c + L.CAP_OFF_OFFSET:c + L.CAP_OFF_PCI_CFG_DATA + 4] = \
            b"\xff" * (L.CAP_OFF_PCI_CFG_DATA + 4 - L.CAP_OFF_OFFSET)

    # --- hooks for the device type ------------------------------------------------
    def device_features(self) -> int:
        return 0

    def device_config(self) -> bytes:
        return b""

    def device_config_write(self, offset: int, size: int, value: int) -> None:
        pass

    def device_features_ok(self, features: int) -> None:
        """Called once FEATURES_OK is accepted."""

    def device_queue_notified(self, q: SplitQueue) -> None:
        pass

    def device_reset(self) -> None:
        pass

    def _ram_view(self, addr: int, length: int) -> memoryview:
        return self.machine.memory.view(addr, length)

    # --- capabilities ---------------------------------------------------------------
    def _add_virtio_cap(self, cfg_type: int, bar: int, offset: int, length: int,
                        extra: int | None = None) -> int:
        # struct virtio_pci_cap / virtio_pci_notify_cap / virtio_pci_cfg_cap (.layout)
        cap_len = L.CAP_LEN if extra is None else L.NOTIFY_CAP_LEN
        off = self.add_capability(CAP_VENDOR, cap_len)
        c = self.config
        c[off + L.CAP_OFF_CFG_LEN] = cap_len
        c[off + L.CAP_OFF_CFG_TYPE] = cfg_type
        c[off + L.CAP_OFF_BAR] = bar
        L.CAP_OFFSET_LENGTH.pack_into(c, off + L.CAP_OFF_OFFSET, offset, length)
        if extra is not None:
            c[off + L.CAP_OFF_NOTIFY_MULT:off + L.CAP_OFF_NOTIFY_MULT + 4] = extra.to_bytes(4, "little")
        return off

    def _hits_pci_cfg_data(self, offset: int, size: int) -> bool:
        if self.pci_cfg_cap is None:
            return False
        c = self.pci_cfg_cap + L.CAP_OFF_PCI_CFG_DATA
        return offset < c + 4 and offset + size > c

    def config_read(self, offset: int, size: int) -> int:
        if self._hits_pci_cfg_data(offset, size):
            self._pci_cfg_access(None)
        return super().config_read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        super().config_write(offset, size, value)
        if self._hits_pci_cfg_data(offset, size):
            self._pci_cfg_access(value)

    def _pci_cfg_access(self, value: int | None) -> None:
        """VIRTIO_PCI_CAP_PCI_CFG (§4.1.4.9): the window reaches the BAR named in the cap."""
        c = self.pci_cfg_cap
        bar = self.config[c + L.CAP_OFF_BAR]
        offset, length = L.CAP_OFFSET_LENGTH.unpack_from(self.config, c + L.CAP_OFF_OFFSET)
        target = self.bars[bar] if bar < 6 else None
        if target is None or length not in (1, 2, 4) or offset % length \
                or offset + length > target.size:
            return
        if value is None:
            v = target.handler.read(offset, length)
            d = c + L.CAP_OFF_PCI_CFG_DATA
            self.config[d:d + length] = v.to_bytes(length, "little")
        else:
            d = c + L.CAP_OFF_PCI_CFG_DATA
            v = int.from_bytes(self.config[d:d + length], "little")
            target.handler.write(offset, length, v)

    # --- status, features, reset ----------------------------------------------------------
    @property
    def offered_features(self) -> int:
        t = LEGACY_TRANSPORT_FEATURES if self.transport == "legacy" else TRANSPORT_FEATURES
        return t | self.device_features()

    @property
    def live(self) -> bool:
        """Buffers may be consumed: DRIVER_OK and not broken (§2.1.2)."""
        return self.status & (DRIVER_OK | DEVICE_NEEDS_RESET | FAILED) == DRIVER_OK

    def has(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    def reset(self) -> None:
        """Device reset (§2.4): everything back to the power-on state."""
        self.status = 0
        self.device_feature_select = self.driver_feature_select = 0
        self.driver_features = self.features = 0
        self.config_msix_vector = NO_VECTOR
        self.queue_select = 0
        self.isr = 0
        self.broken = None
        self.queue_reset_done.clear()
        for q in self.queues:
            q.reset()
        self.set_irq(0)
        self.device_reset()
        if trace.enabled:
            trace.emit("virtio.reset", dev=self.name)

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        # DEVICE_NEEDS_RESET is the device's to set and only a reset clears it.
        new = (value & 0xFF & ~DEVICE_NEEDS_RESET) | (self.status & DEVICE_NEEDS_RESET)
        if new & FEATURES_OK and not self.status & FEATURES_OK:
            drv = self.driver_features
            if self.legacy is not None and not drv >> F_VERSION_1 & 1:
                # A driver without VERSION_1 on a device with the legacy interface: as
                # QEMU's virtio_set_status, no validation — the bit sticks and the
                # features (masked to the legacy offer) are frozen.
                self._features_taken(drv & self.legacy.accepted_features())
            elif drv & ~self.offered_features or not drv >> F_VERSION_1 & 1:
                new &= ~FEATURES_OK     # §3.1.1 step 6: the driver re-reads and sees it refused
                if trace.enabled:
                    trace.emit("virtio.features_refused", dev=self.name, features=drv)
            else:
                self._features_taken(drv)
        old = self.status
        self.status = new
        if trace.enabled:
            trace.emit("virtio.status", dev=self.name, old=old, new=new)
        # A legacy driver (no VERSION_1) has no FEATURES_OK step (§4.1.4.8, QEMU
        # virtio_set_status checks it only for VERSION_1).
        legacy_driver = self.transport != "modern" and not self.has(F_VERSION_1)
        if new & DRIVER_OK and not old & DRIVER_OK and not new & FEATURES_OK \
                and not legacy_driver:
            self.fail("DRIVER_OK without FEATURES_OK")

    def _features_taken(self, features: int) -> None:
        """The negotiated features take effect (modern: FEATURES_OK; legacy: the write)."""
        self.features = features
        for q in self.queues:
            self._queue_features(q)
        self.device_features_ok(features)

    def _queue_features(self, q: SplitQueue) -> None:
        q.indirect = self.has(F_RING_INDIRECT_DESC)
        q.event_idx = self.has(F_RING_EVENT_IDX)

    def fail(self, why: str) -> None:
        """Enter the error state: DEVICE_NEEDS_RESET + configuration interrupt (§2.1.2)."""
        if self.broken is None:
            self.broken = why
        if trace.enabled:
            trace.emit("virtio.needs_reset", dev=self.name, why=why)
        first = not self.status & DEVICE_NEEDS_RESET
        self.status |= DEVICE_NEEDS_RESET
        if first and self.status & DRIVER_OK:
            self.config_changed(bump_generation=False)

    # --- interrupts -------------------------------------------------------------------------
    def _signal(self, vector: int, isr_bit: int) -> None:
        self.isr |= isr_bit
        self.interrupts += 1
        if self.msix is not None and self.msix.enabled:
            if vector != NO_VECTOR:
                self.msix.notify(vector)
        else:
            self.set_irq(1)

    def queue_interrupt(self, q: SplitQueue) -> None:
        # should_notify first: it records what was signalled
        if q.should_notify() or (self.features >> F_NOTIFY_ON_EMPTY & 1 and q.drained()):
            self._signal(q.msix_vector, L.ISR_QUEUE)

    def config_changed(self, bump_generation: bool = True) -> None:
        """Configuration change notification (§4.1.4.5: ISR bit 1)."""
        if bump_generation:
            self.config_generation = (self.config_generation + 1) & 0xFF
        if self.status & DRIVER_OK:
            self._signal(self.config_msix_vector, L.ISR_CONFIG)

    # --- ISR (§4.1.4.5): read-to-clear, deasserts INTx ------------------------------------------
    def _isr_read(self, offset: int, size: int) -> int:
        if offset:
            return 0
        v = self.isr
        self.isr = 0
        self.set_irq(0)
        return v

    # --- device configuration --------------------------------------------------------------------
    def _devcfg_read(self, offset: int, size: int) -> int:
        cfg = self.device_config()
        if offset + size > len(cfg):
            return (1 << (8 * size)) - 1       # as QEMU: past the config, all ones
        return int.from_bytes(cfg[offset:offset + size], "little")

    def _devcfg_write(self, offset: int, size: int, value: int) -> None:
        if offset + size <= len(self.device_config()):
            self.device_config_write(offset, size, value)

    # --- notifications (§4.1.4.4) ---------------------------------------------------------------
    def _notify_write(self, offset: int, size: int, value: int) -> None:
        self._notify(offset // NOTIFY_MULT, offset, value)

    def _notify(self, index: int, offset: int = 0, value: int = 0) -> None:
        """Queue ``index`` was notified (modern notify region or legacy QUEUE_NOTIFY)."""
        self.notifies += 1
        if index >= self.num_queues:
            if trace.enabled:
                trace.emit("virtio.bad_notify", dev=self.name, offset=offset, value=value)
            return
        q = self.queues[index]
        if not self.live or not q.enabled:
            if trace.enabled:
                trace.emit("virtio.notify_ignored", dev=self.name, queue=index, status=self.status)
            return
        if not self.command & CMD_BUS_MASTER:
            # The rings are unreachable: a real function would master-abort.
            self.fail(f"queue {index} notified with bus mastering disabled")
            return
        try:
            if not q.ready:
                q.ram = self.machine.memory.buf
                q.drop_code = self.machine.memory.drop_code
                q.start()
            self.device_queue_notified(q)
        except QueueError as e:
            self.fail(str(e))
        except Exception as e:  # a bug of ours must not take the host down
            self.internal_errors += 1
            self.fail(f"internal error: {type(e).__name__}: {e}")

    # --- common configuration ----------------------------------------------------------------------
    def _queue(self) -> SplitQueue | None:
        return self.queues[self.queue_select] if self.queue_select < self.num_queues else None

    def _common_get(self, name: str) -> int:
        q = self._queue()
        if name == "device_feature":
            sel = self.device_feature_select
            return (self.offered_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
        if name == "driver_feature":
            sel = self.driver_feature_select
            return (self.driver_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
        if name == "num_queues":
            return self.num_queues
        if name == "device_status":
            return self.status
        if name in ("device_feature_select", "driver_feature_select", "config_msix_vector",
                    "config_generation", "queue_select"):
            return getattr(self, name)
        if q is None:
            return NO_VECTOR if name == "queue_msix_vector" else 0
        return {
            "queue_size": q.size, "queue_msix_vector": q.msix_vector,
            "queue_enable": int(q.enabled), "queue_notify_off": q.index,
            "queue_desc": q.desc_addr, "queue_driver": q.driver_addr,
            "queue_device": q.device_addr, "queue_notify_data": 0,
            "queue_reset": int(q.index in self.queue_reset_done),
        }[name]

    def _common_read(self, offset: int, size: int) -> int:
        f = COMMON_FIELDS.get(offset)
        if f is not None and f[1] == size:
            return self._common_get(f[0])
        if f is None and offset - 4 in COMMON_FIELDS and COMMON_FIELDS[offset - 4][1] == 8 and size == 4:
            return self._common_get(COMMON_FIELDS[offset - 4][0]) >> 32
        if f is not None and f[1] == 8 and size == 4:
            return self._common_get(f[0]) & 0xFFFFFFFF
        # Any other width: assemble from the fields' bytes.
        image = bytearray(COMMON_SIZE)
        for off, (name, sz) in COMMON_FIELDS.items():
            image[off:off + sz] = (self._common_get(name) & ((1 << (8 * sz)) - 1)).to_bytes(sz, "little")
        if offset + size > COMMON_SIZE:
            return 0
        return int.from_bytes(image[offset:offset + size], "little")

    def _common_write(self, offset: int, size: int, value: int) -> None:
        f = COMMON_FIELDS.get(offset)
        half = 0
        if f is None and offset - 4 in COMMON_FIELDS and COMMON_FIELDS[offset - 4][1] == 8 and size == 4:
            f, half = COMMON_FIELDS[offset - 4], 1
        if f is None or not (f[1] == size or (f[1] == 8 and size == 4)):
            if trace.enabled:
                trace.emit("virtio.bad_common_write", dev=self.name, offset=offset, size=size)
            return
        name = f[0]
        if trace.enabled:
            trace.emit("virtio.common_write", dev=self.name, field=name, value=value)
        if name == "device_feature_select":
            self.device_feature_select = value
        elif name == "driver_feature_select":
            self.driver_feature_select = value
        elif name == "driver_feature":
            sel = self.driver_feature_select
            if sel < 2 and not self.status & FEATURES_OK:
                mask = 0xFFFFFFFF << (32 * sel)
                self.driver_features = (self.driver_features & ~mask) | (value << (32 * sel))
        elif name == "config_msix_vector":
            self.config_msix_vector = value if value < self.msix_vectors else NO_VECTOR
        elif name == "device_status":
            self._set_status(value)
        elif name == "queue_select":
            self.queue_select = value
        else:
            self._queue_write(name, size, half, value)

    def _queue_write(self, name: str, size: int, half: int, value: int) -> None:
        q = self._queue()
        if q is None:
            return
        if name == "queue_msix_vector":
            q.msix_vector = value if value < self.msix_vectors else NO_VECTOR
            return
        if name == "queue_reset":
            if value == 1 and self.has(F_RING_RESET):
                q.reset()
                self._queue_features(q)
                self.queue_reset_done.add(q.index)
            return
        if name == "queue_enable":
            if value == 1 and not q.enabled:
                q.enabled = True
                self.queue_reset_done.discard(q.index)
            return
        if q.enabled:
            return                      # §4.1.4.3.2: ring set-up is frozen once enabled
        if name == "queue_size":
            if 0 < value <= q.max_size and not value & (value - 1):
                q.size = value
        elif name in ("queue_desc", "queue_driver", "queue_device"):
            attr = {"queue_desc": "desc_addr", "queue_driver": "driver_addr",
                    "queue_device": "device_addr"}[name]
            cur = getattr(q, attr)
            if size == 8:
                cur = value
            elif half:
                cur = (cur & 0xFFFFFFFF) | (value << 32)
            else:
                cur = (cur & ~0xFFFFFFFF) | value
            setattr(q, attr, cur)


class _Handler:
    __slots__ = ("read", "write")

    def __init__(self, read, write):
        self.read = read
        self.write = write


def _ignore(offset: int, size: int, value: int) -> None:
    pass


def _ones(offset: int, size: int) -> int:
    return (1 << (8 * size)) - 1
