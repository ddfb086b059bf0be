"""Crash tests that drive a guest: record a run on the machine, then let the crash
engine (:mod:`blockbed.block.crash`) sweep it.

Layering (docs/architecture.md): this package uses ``devices`` and ``machine`` to
run the guest and ``block.crash`` to check the result; nothing below it imports it.
"""
