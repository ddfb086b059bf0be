"""The Linux guest: Debian's kernel plus a busybox initramfs that tests one disk controller.

build.py makes build/linux/bzImage and build/linux/initramfs.cpio.gz from Debian packages;
qemu.py boots them under QEMU (and under blockbed) and checks the disk afterwards.
The disk layout and the pattern are defined in layout.py (docs/linux-guest.md).
"""
