"""blockbed: a Python test bed for the virtual storage stack.

Subpackages, from the guest down to the host file:

- :mod:`blockbed.machine` — a minimal AMD64 machine on unicorn (CPU, RAM, PCI,
  interrupts, event queue, qtest API).
- :mod:`blockbed.devices` — emulated controllers (virtio-blk, AHCI, IDE, LSI).
- :mod:`blockbed.block` — the block-driver graph: BlockBackend, formats
  (qcow2, raw), protocols (file, memory), filters (blkdebug, logwrites).
- :mod:`blockbed.cli` — the ``blockbed`` command.
- :mod:`blockbed.trace` — structured trace events shared by every layer.
"""

__version__ = "0.1.0"
