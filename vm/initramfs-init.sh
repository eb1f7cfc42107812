#!/bin/busybox sh
# Stage 1 of the test VM (the initramfs's /init): load the 9p and overlay modules, mount the
# host's root read-only over 9p under a tmpfs overlay, mount the shared output directory, and
# hand over to stage 2 (vm/guest-init.sh, named on the kernel command line).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.load); do insmod /modules/$m || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro hostroot /lower || exec sh
mount -t tmpfs -o size=80% tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot || exec sh
mkdir -p /newroot/vm-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmout /newroot/vm-out || exec sh
for arg in $(cat /proc/cmdline); do case "$arg" in foobar.init=*) stage2="${arg#foobar.init=}";; esac; done
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh "$stage2"
