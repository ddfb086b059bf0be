"""AHCI register reset values and access rules (AHCI 1.3 §3), in the spirit of QEMU's
ahci-test pci_spec / hba_spec / port_spec checks, and the ICH9 PCI identity."""

from __future__ import annotations

from blockbed.devices import ahci as A
from blockbed.machine.pci import CAP_MSI
from libqos_ata import AhciQ


def test_pci_identity():
    q = AhciQ()
    cfg = lambda off, size=4: q.qt.pci_config_read(q.hba, off, size)
    assert cfg(0, 2) == 0x8086 and cfg(2, 2) == 0x2922
    assert cfg(0x09, 1) == 0x01 and cfg(0x0A, 1) == 0x06 and cfg(0x0B, 1) == 0x01
    assert cfg(0x3D, 1) == 1                              # INTA#
    assert cfg(0x06, 2) & 0x10                            # capability list
    caps, off = [], cfg(0x34, 1)
    while off:
        caps.append(cfg(off, 1))
        off = cfg(off + 1, 1)
    assert CAP_MSI in caps and 0x12 in caps               # MSI and SATA capability
    # BAR5 is a 32-bit memory BAR of 4 KiB (sizing through all-ones)
    q.qt.pci_config_write(q.hba, 0x24, 0xFFFFFFFF)
    assert q.qt.pci_config_read(q.hba, 0x24) == 0xFFFFF000
    q.qt.pci_config_write(q.hba, 0x24, q.abar)


def test_hba_reset_values():
    q = AhciQ()
    cap = q.r(A.CAP)
    assert cap & A.CAP_S64A and cap & A.CAP_SNCQ and cap & A.CAP_SAM
    assert (cap >> 8) & 0x1F == 31                        # 32 command slots
    assert cap & 0x1F == A.NUM_PORTS - 1
    assert (cap >> 20) & 0xF in (1, 2, 3)                 # interface speed
    for bit in (27, 25, 26, 17, 16, 15, 7, 6, 5):         # SSS, SAL, SALP, SPM, FBSS, PMD, CCCS, EMS, SXS
        assert not cap & (1 << bit)
    assert q.r(A.GHC) == A.GHC_AE                         # AE set (CAP.SAM), IE and HR clear
    assert q.r(A.IS) == 0
    assert q.r(A.PI) == (1 << A.NUM_PORTS) - 1
    assert q.r(A.VS) == 0x00010300
    for reg in (A.CCC_CTL, A.CCC_PORTS, A.EM_LOC, A.EM_CTL, A.CAP2, A.BOHC):
        assert q.r(reg) == 0
    # read-only registers ignore writes
    for reg in (A.CAP, A.PI, A.VS):
        v = q.r(reg)
        q.w(reg, ~v & 0xFFFFFFFF)
        assert q.r(reg) == v


def test_port_reset_values():
    q = AhciQ(disks=[1 << 20])
    for p in range(A.NUM_PORTS):
        assert q.pr(p, A.P_IS) == 0 and q.pr(p, A.P_IE) == 0
        cmd = q.pr(p, A.P_CMD)
        assert cmd & (A.CMD_ST | A.CMD_FRE | A.CMD_CR | A.CMD_FR | A.CMD_CLO) == 0
        assert cmd & A.CMD_SUD and cmd & A.CMD_POD        # RO 1 without SSS / cold presence
        assert (cmd >> 28) == 0                           # ICC
        assert q.pr(p, A.P_TFD) == 0x7F
        assert q.pr(p, A.P_SIG) == 0xFFFFFFFF
        assert q.pr(p, A.P_SCTL) == 0 and q.pr(p, A.P_SERR) == 0
        assert q.pr(p, A.P_SACT) == 0 and q.pr(p, A.P_CI) == 0
        assert q.pr(p, A.P_SSTS) == (0x113 if p == 0 else 0)   # device only on port 0


def test_port_register_access_rules():
    q = AhciQ()
    q.pw(0, A.P_CLB, 0x12345FFF)
    assert q.pr(0, A.P_CLB) == 0x12345C00                 # 1 KiB aligned
    q.pw(0, A.P_FB, 0x12345FFF)
    assert q.pr(0, A.P_FB) == 0x12345F00                  # 256-byte aligned
    q.pw(0, A.P_IE, 0xFFFFFFFF)
    assert q.pr(0, A.P_IE) == A.IE_MASK
    q.pw(0, A.P_CMD, 0xFFFFFFFF & ~A.CMD_ST)
    cmd = q.pr(0, A.P_CMD)
    assert cmd & A.CMD_FRE and cmd & A.CMD_FR             # FIS receive running
    assert not cmd & (A.CMD_CR | A.CMD_CLO) and (cmd >> 28) == 0
    q.pw(0, A.P_SACT, 1)                                  # SACT/CI only while ST=1
    q.pw(0, A.P_CI, 1)
    assert q.pr(0, A.P_SACT) == 0 and q.pr(0, A.P_CI) == 0


def test_signature_after_fis_receive_and_hba_reset():
    q = AhciQ()
    q.port_start(0)
    assert q.pr(0, A.P_SIG) == 0x101 and q.pr(0, A.P_TFD) == 0x150
    fis = q.rfis(0, A.RFIS_RFIS, 20)
    assert fis[0] == 0x34 and fis[2] == 0x50 and fis[12] == 1 and fis[4] == 1
    q.w(A.GHC, A.GHC_HR)
    assert q.r(A.GHC) == A.GHC_AE                         # HR reads 0 once done, IE cleared
    assert q.pr(0, A.P_CMD) & (A.CMD_ST | A.CMD_FRE) == 0
    assert q.pr(0, A.P_TFD) == 0x7F and q.pr(0, A.P_SIG) == 0xFFFFFFFF
    assert q.pr(0, A.P_CLB) == q.clb[0]                   # not reset by HBA reset


def test_idp_reaches_abar():
    q = AhciQ()
    io = q.qt.bar_address(q.hba, 4)
    q.qt.outl(io + 0x10, A.VS)
    assert q.qt.inl(io + 0x14) == 0x00010300
    q.qt.outl(io + 0x10, 0x100 + A.P_CLB)
    q.qt.outl(io + 0x14, 0x4000)
    assert q.pr(0, A.P_CLB) == 0x4000
