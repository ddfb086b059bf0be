#!/bin/busybox sh
# blockbed Linux guest /init: test one disk controller, print one result line, power off.
# Layout and pattern: blockbed/linuxguest/layout.py and docs/linux-guest.md.
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# sleep: let the console drain before the power goes (the tty sends the line on THRE
# interrupts; blockbed's machine takes one raised under IF=0 only at the next exit,
# docs/linux-machine.md, and the idle loop's HLT is one).
result() { echo "BLOCKBED-LINUX $*"; sync; sleep 1; poweroff -f; }
ctrl=$(sed -n 's/.*blockbed\.ctrl=\([a-z]*\).*/\1/p' /proc/cmdline)
[ -f "/modules/$ctrl.list" ] || result "FAIL unknown-controller '$ctrl'"
for m in $(cat /modules/common.list /modules/$ctrl.list); do
    insmod "/modules/$m" 2>/dev/null || grep -q "^$(basename $m .ko | tr - _) " /proc/modules || echo "insmod $m failed"
done
case "$ctrl" in virtio) dev=/dev/vda ;; *) dev=/dev/sda ;; esac
i=0
while [ ! -b "$dev" ]; do
    i=$((i + 1)); [ $i -gt 100 ] && result "FAIL no-disk $dev"; sleep 0.1
done
P_OFF_MB=@PATTERN_OFFSET_MB@ P_MB=@PATTERN_MB@ FS_KB=@FS_KB@
mode=$(sed -n 's/.*blockbed\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ "$mode" = crash ]; then
    # Crash workload (blockbed crashtest --linux): a fresh ext4, made durable, then files
    # written and fsync'd one by one; each BLOCKBED-FSYNC line is a promise the host holds
    # every later crash state to.  Power goes off without unmounting.
    /sbin/mke2fs -q -F -t ext4 $dev ${FS_KB}k || result "FAIL mke2fs"
    mkdir -p /mnt
    mount -t ext4 -o data=ordered $dev /mnt || result "FAIL mount"
    sync
    echo "BLOCKBED-CRASH ready"
    for n in 1 2 3 4 5 6; do
        dd if=/pattern.bin of=/mnt/f$n bs=4k count=$((n * 6)) conv=fsync 2>/dev/null || result "FAIL write-f$n"
        echo "BLOCKBED-FSYNC /f$n $((n * 24576))"
        # unsynced churn between the promises: a second file that is never fsync'd
        dd if=/pattern.bin of=/mnt/churn$n bs=4k count=4 2>/dev/null
    done
    result "PASS crash $ctrl"
fi
if [ "$mode" = bench ]; then
    # I/O benchmark (benchmarks/linux_io.py): each phase is one dd with O_DIRECT, queue
    # depth 1, between two console lines the host timestamps as they arrive.
    for spec in write64k:64k:256 read64k:64k:256 write4k:4k:1024 read4k:4k:1024; do
        name=${spec%%:*}; rest=${spec#*:}; bs=${rest%%:*}; n=${rest#*:}
        echo "BLOCKBED-BENCH begin $name"
        case $name in
        write*) dd if=/dev/zero of=$dev bs=$bs count=$n oflag=direct 2>/dev/null ;;
        *) dd if=$dev of=/dev/null bs=$bs count=$n iflag=direct 2>/dev/null ;;
        esac || result "FAIL bench-$name"
        echo "BLOCKBED-BENCH end $name"
    done
    result "PASS bench $ctrl"
fi
dd if=/pattern.bin of=$dev bs=1M seek=$P_OFF_MB count=$P_MB oflag=direct conv=fsync 2>/dev/null || result "FAIL dd-write"
sync
echo 3 > /proc/sys/vm/drop_caches
dd if=$dev of=/readback.bin bs=1M skip=$P_OFF_MB count=$P_MB iflag=direct 2>/dev/null || result "FAIL dd-read"
cmp /pattern.bin /readback.bin || result "FAIL pattern-mismatch"
/sbin/mke2fs -q -F -t ext4 $dev ${FS_KB}k || result "FAIL mke2fs"
mkdir -p /mnt
mount -t ext4 -o data=ordered $dev /mnt || result "FAIL mount"
for n in 1 2 3; do
    dd if=/pattern.bin of=/mnt/file$n bs=64k conv=fsync 2>/dev/null || result "FAIL write-file$n"
done
echo blockbed > /mnt/hello.txt; sync
umount /mnt || result "FAIL umount"
/sbin/e2fsck -f -n $dev >/e2fsck.log 2>&1 || { cat /e2fsck.log; result "FAIL e2fsck"; }
mount -t ext4 -o ro $dev /mnt || result "FAIL remount"
for n in 1 2 3; do cmp /pattern.bin /mnt/file$n || result "FAIL file$n-mismatch"; done
umount /mnt
result "PASS $ctrl"
