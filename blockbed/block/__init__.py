"""The block-driver graph (see docs/block-layer.md).

Every node — format (qcow2, raw), protocol (file, memory) or filter
(blkdebug, logwrites) — implements :class:`blockbed.block.driver.BlockDriver`.
Devices never talk to drivers directly; they use
:class:`blockbed.block.backend.BlockBackend`, the one place that knows the
cache mode, the guest-visible write cache and the error policy.
"""
