"""virtio devices: the virtio-pci transport, split virtqueues, the block device.

- :mod:`.pci` — :class:`VirtioPCIDevice`, the virtio 1.2 §4.1 transport
  (vendor capabilities, common/notify/ISR/device configuration in one memory
  BAR, MSI-X table and PBA in another), status, reset, feature negotiation;
  modern-only, transitional or legacy-only.
- :mod:`.legacy` — the legacy I/O BAR0 registers (§4.1.4.8) of the
  transitional and legacy-only variants.
- :mod:`.virtqueue` — :class:`SplitQueue`, split rings (§2.7): descriptor
  chains, indirect descriptors, EVENT_IDX, and the validation of every
  guest-controlled ring field.
- :mod:`.blk` — :class:`VirtioBlk` (§5.2): request parsing (one place that
  validates the request) kept apart from the I/O against the BlockBackend,
  and :func:`attach`, the entry point of ``--drive …,if=virtio``.
"""

from .blk import VirtioBlk, attach

__all__ = ["VirtioBlk", "attach"]
