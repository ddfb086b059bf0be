"""Reset and ACPI power-off ports driven from Python."""

from blockbed.machine.events import EventQueue
from blockbed.machine.reset import PM_TIMER_HZ, ResetControl


def make():
    ev = EventQueue()
    log = []
    rc = ResetControl(lambda why: log.append(("reset", why)), lambda why: log.append(("off", why)),
                      events=ev, ns_per_tick=1000)
    return ev, rc, log


def test_port92_a20_kept_and_bit0_resets():
    _, rc, log = make()
    h = rc.port92_handler()
    h.write(0, 1, 0x02)
    assert h.read(0, 1) == 0x02 and log == []
    h.write(0, 1, 0x03)
    assert log == [("reset", "port 0x92 bit 0")]


def test_kbc_fe_resets_other_commands_do_not():
    _, rc, log = make()
    h = rc.kbc_handler()
    h.write(0, 1, 0xAD)
    assert log == []
    h.write(0, 1, 0xFE)
    assert log[0][0] == "reset"


def test_cf9_needs_rst_cpu():
    _, rc, log = make()
    h = rc.cf9_handler()
    h.write(0, 1, 0x02)                 # SYS_RST alone: only arms
    assert log == [] and h.read(0, 1) == 0x02
    h.write(0, 1, 0x06)                 # what Linux's reboot=pci writes
    assert log[0][0] == "reset"


def test_pm1a_slp_en_s5_powers_off_and_other_sleep_types_do_not():
    _, rc, log = make()
    h = rc.pm_handler()
    h.write(4, 2, 0x0001)               # SCI_EN
    assert h.read(4, 2) == 0x0001
    h.write(4, 2, 0x2000 | 5 << 10)     # SLP_EN with SLP_TYP 5: not our S5
    assert log == []
    h.write(4, 2, 0x2000)
    assert log == [("off", "ACPI PM1a_CNT SLP_EN, SLP_TYP S5")]
    assert h.read(4, 2) & 0x2000 == 0   # SLP_EN reads as 0


def test_pm_timer_runs_on_the_virtual_clock():
    ev, rc, _ = make()
    h = rc.pm_handler()
    assert h.read(8, 4) == 0
    ev.step(1_000_000)                  # 1 s
    assert h.read(8, 4) == PM_TIMER_HZ & 0xFFFFFF


def test_smi_cmd_acpi_enable_sets_sci_en():
    """Linux's acpi_enable writes the FADT's ACPI_ENABLE to SMI_CMD and waits for
    PM1a_CNT.SCI_EN ("Hardware did not enter ACPI mode" otherwise)."""
    _, rc, _ = make()
    smi, pm = rc.smi_cmd_handler(), rc.pm_handler()
    assert pm.read(4, 2) & 1 == 0
    smi.write(0, 1, 0xF1)
    assert pm.read(4, 2) & 1 == 1 and smi.read(0, 1) == 0xF1
    smi.write(0, 1, 0xF0)
    assert pm.read(4, 2) & 1 == 0


def test_pm_timer_agrees_with_the_pit_clock():
    """The PM timer (3.579545 MHz) is exactly 3 PIT clocks per tick on the machine's
    clock (clock.py), so Linux's LAPIC-vs-PM-timer calibration check agrees."""
    from blockbed.machine.clock import TICK_HZ
    ev = EventQueue()
    rc = ResetControl(lambda w: None, lambda w: None, events=ev)
    ev.step(TICK_HZ // 10)                       # 100 ms of virtual time
    assert abs(rc.pm_timer() - PM_TIMER_HZ // 10) <= 1


def test_cf9_byte_access_reaches_the_reset_register_and_cf8_dwords_stay_pci():
    """On the Linux platform a byte access to 0xCF9 is the PIIX3 reset control register
    (Linux's reboot=pci writes 0x02 then 0x06), while dword accesses to 0xCF8 still
    set CONFIG_ADDRESS, as in QEMU's PIIX3."""
    from blockbed.machine import Machine, MachineConfig
    from blockbed.machine.platform import LinuxPlatform
    from blockbed.machine.qtest import QTest
    m = Machine(MachineConfig(memory_mib=16))
    m.platform = LinuxPlatform(m)
    qt = QTest(m)
    qt.outl(0xCF8, 0x80000000)
    assert qt.inl(0xCF8) == 0x80000000
    assert qt.inl(0xCFC) & 0xFFFF == 0x8086          # host bridge vendor: the address held
    qt.outb(0xCF9, 0x02)
    assert qt.inb(0xCF9) == 0x02 and m.exit_code is None
    assert qt.inl(0xCF8) == 0x80000000                # the reset register is a byte of its own
    qt.outb(0xCF9, 0x06)
    assert m.exit_code == 0 and any("0xCF9" in w for w in m.warnings)
