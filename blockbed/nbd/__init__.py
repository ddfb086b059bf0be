"""NBD: a server exporting any image blockbed opens (the qemu-nbd role).

:mod:`.protocol` holds the wire constants and layouts, :mod:`.handshake` the
option haggling, :mod:`.export` what an export is and says, :mod:`.server`
the transmission phase and the listener.  ``blockbed nbd`` is the CLI.
"""
