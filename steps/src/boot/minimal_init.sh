#!/qflow/busybox sh
# qflow's minimal init (a boot's `init: minimal`), run by the kernel from qflow's
# initramfs as /qflow/init instead of the system disk's own init (systemd).
#
# It mounts /proc, /sys and /dev, loads the disk and ext4 drivers when the
# initramfs carries the kernel's modules (a distribution kernel; a kernel with
# them built in needs none), mounts the root disk named by `root=` (with
# `rootfstype=`, `rootflags=`, `ro`/`rw` from the kernel command line; read-write
# by default: QEMU's `-snapshot` or qflow's overlays keep the image itself
# untouched), mounts /proc, /sys, /dev, /dev/pts, /dev/shm and /run in it, and
# hands the serial console to root's login shell in it, in /root: qflow then
# types the step's commands as it does at a logged-in shell.
#
# It reads no value of the workflow: everything comes from the kernel command
# line. Whatever stops it prints one `qflow-init: error:` line naming what the
# kernel lacks and exits, which panics the kernel; qflow reports that line.
/qflow/busybox mkdir -p /qflow/bin
/qflow/busybox --install -s /qflow/bin
export PATH=/qflow/bin

fail() {
	echo "qflow-init: error: $*"
	exit 1
}

mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc || fail "cannot mount /proc: build in CONFIG_PROC_FS"
mount -t sysfs sysfs /sys || fail "cannot mount /sys: build in CONFIG_SYSFS"
mount -t devtmpfs devtmpfs /dev 2>/dev/null || grep -q devtmpfs /proc/mounts ||
	fail "cannot mount /dev: build in CONFIG_DEVTMPFS"

release=$(uname -r)
if [ -f "/lib/modules/$release/modules.dep" ]; then
	# The kernel asks /sbin/modprobe for what a driver needs (crc32c for ext4).
	mkdir -p /sbin
	ln -sf /qflow/busybox /sbin/modprobe
	for m in crc32c_generic crc32c_intel ata_piix ahci sd_mod virtio_pci virtio_blk virtio_scsi ext4; do
		modprobe -q "$m" 2>/dev/null
	done
fi

root=
fstype=
flags=
mode=rw
for arg in $(cat /proc/cmdline); do
	case $arg in
	root=*) root=${arg#root=} ;;
	rootfstype=*) fstype=${arg#rootfstype=} ;;
	rootflags=*) flags=${arg#rootflags=} ;;
	ro) mode=ro ;;
	rw) mode=rw ;;
	esac
done
[ -n "$root" ] || fail "the kernel command line names no root disk: add root=/dev/sda1 (or the system disk's device) to append"

# Disks appear as their drivers probe them: wait up to 10 s.
dev=$root
tries=0
while :; do
	case $root in
	UUID=* | LABEL=*) dev=$(findfs "$root" 2>/dev/null) ;;
	esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	tries=$((tries + 1))
	if [ $tries -gt 100 ]; then
		disks=$(awk 'NR > 2 { printf " %s", $4 }' /proc/partitions)
		fail "the kernel cannot mount the root disk: it found no $root (its disks:${disks:- none}): build in the disk's driver (CONFIG_ATA_PIIX and CONFIG_BLK_DEV_SD for -hda, CONFIG_VIRTIO_BLK for virtio), or check root= in append"
	fi
	sleep 0.1
done

if [ -z "$fstype" ]; then
	# The ext2/3/4 superblock's magic, 0xEF53 at byte 1080 (busybox has no blkid).
	magic=$(dd if="$dev" bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
	[ "$magic" = 53ef ] && fstype=ext4
fi
if [ -n "$fstype" ] && ! grep -qw "$fstype" /proc/filesystems; then
	case $fstype in
	ext2 | ext3 | ext4) option=CONFIG_EXT4_FS ;;
	xfs) option=CONFIG_XFS_FS ;;
	btrfs) option=CONFIG_BTRFS_FS ;;
	*) option="the kernel option of $fstype" ;;
	esac
	fail "the kernel cannot mount the root disk: $dev holds $fstype, which the kernel does not know: build in $option"
fi
opts=$mode
[ -n "$flags" ] && opts=$opts,$flags
if [ -n "$fstype" ]; then
	why=$(mount -t "$fstype" -o "$opts" "$dev" /newroot 2>&1)
else
	why=$(mount -o "$opts" "$dev" /newroot 2>&1)
fi
[ $? -eq 0 ] || fail "the kernel cannot mount the root disk $dev (${fstype:-unknown file system}): $why"

for d in proc sys dev run; do
	[ -d "/newroot/$d" ] || mkdir "/newroot/$d" 2>/dev/null ||
		fail "the root disk has no /$d to mount on and is read-only"
done
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620 devpts /newroot/dev/pts 2>/dev/null
mount -t tmpfs -o nosuid,nodev tmpfs /newroot/dev/shm 2>/dev/null
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /newroot/run 2>/dev/null
[ -f /newroot/etc/hostname ] && hostname "$(cat /newroot/etc/hostname)"

shell=$(awk -F: '$1 == "root" { print $7 }' /newroot/etc/passwd 2>/dev/null)
[ -n "$shell" ] && [ -x "/newroot$shell" ] || shell=/bin/sh
[ -x "/newroot$shell" ] || fail "the root disk $dev has no $shell: is it a system image?"
export HOME=/root USER=root LOGNAME=root SHELL="$shell" TERM=linux
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "qflow-init: root disk $dev ($fstype, $mode) mounted; starting $shell"
# busybox's switch_root takes a regular /init as the sign it runs from an initramfs.
[ -f /init ] || : >/init
# cttyhack makes the console the shell's controlling terminal (job control,
# Ctrl-C); switch_root frees the initramfs and runs the login shell as PID 1.
exec /qflow/busybox setsid /qflow/busybox cttyhack /qflow/busybox switch_root /newroot "$shell" -c 'cd "$HOME" 2>/dev/null || cd /; exec "$0" -l' "$shell"
