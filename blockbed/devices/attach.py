"""Wire ``--drive`` specifications to controllers on a machine.

``attach_drives(machine, ["file=disk.qcow2,if=virtio,cache=none", …])``
parses each spec (:mod:`blockbed.block.drivespec`), opens its
:class:`~blockbed.block.backend.BlockBackend`, connects the backend's
``stop`` error policy to the machine, and hands the backend to the
controller module named by ``if=``.  Each controller module exposes
``attach(machine, backend, spec) -> PCIDevice``; a module that finds its
controller already on the machine adds the drive to it (AHCI ports, IDE
units, LSI targets) instead of adding a second controller.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..block.drivespec import DriveSpecError, open_drive, parse_drive_spec

if TYPE_CHECKING:
    from ..machine.board import Machine

# if= value -> the module whose attach() builds that controller
CONTROLLERS = {
    "virtio": "blockbed.devices.virtio",
    "ahci": "blockbed.devices.ahci",
    "ide": "blockbed.devices.ide",
    "lsi": "blockbed.devices.lsi53c895a",
}


def controller_module(interface: str):
    name = CONTROLLERS.get(interface)
    if name is None:
        raise ValueError(f"drive option 'if': invalid value '{interface}'; allowed: {', '.join(CONTROLLERS)}")
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ValueError(f"drive option 'if={interface}': this controller is not available yet") from None
    if not hasattr(module, "attach"):
        raise ValueError(f"drive option 'if={interface}': this controller is not available yet")
    return module


def attach_drives(machine: "Machine", specs: list[str], request_log: bool = False) -> list:
    """Open every drive and attach it; raises ValueError with one clear line on a bad spec."""
    backends = []
    for index, text in enumerate(specs):
        try:
            spec = parse_drive_spec(text)
        except DriveSpecError as exc:
            raise ValueError(str(exc)) from None
        module = controller_module(spec.interface)
        try:
            backend = open_drive(spec, request_log=request_log, name=spec.id or f"drive{index}")
        except DriveSpecError as exc:
            raise ValueError(str(exc)) from None
        backend.on_stop = lambda reason: machine.stop(reason.message())
        machine.on_close.append(backend.close)
        dev = module.attach(machine, backend, spec)
        restart = getattr(dev, "resume", None)
        if restart is not None and restart not in machine.on_resume:
            machine.on_resume.append(restart)       # one controller may carry many drives
        backends.append(backend)
    return backends
