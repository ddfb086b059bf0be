"""The ATA command layer shared by the AHCI and PIIX IDE controllers.

- :mod:`.regs`: status/error bits, opcodes, the task file and command outputs;
- :mod:`.identify`: the IDENTIFY DEVICE data block;
- :mod:`.drive`: :class:`AtaDrive`, which decodes and executes commands
  against a BlockBackend.
"""

from .drive import AtaDrive, Command, DriveConfig
from .identify import IdentifyState, ata_string, ata_string_decode, build_identify
from .regs import Cmd, Outputs, Protocol, TaskFile

__all__ = ["AtaDrive", "Command", "DriveConfig", "IdentifyState", "ata_string",
           "ata_string_decode", "build_identify", "Cmd", "Outputs", "Protocol", "TaskFile"]
