#!/bin/sh
# Stage 2 of the test VM, run as PID 1 on the host's root (read-only 9p under a tmpfs overlay:
# writes stay in the guest's memory). Mounts what the suite needs, points /lib/modules at the
# Debian kernel's unpacked modules, runs the host's commands from /vm-out/cmd and leaves their
# exit status in /vm-out/status, then powers off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /run fresh (the host's network namespaces must not show); /tmp stays the overlay's, since
# the checkout may live there.
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        foobar.root=*) root="${arg#*=}" ;;
        foobar.modules=*) modules="${arg#*=}" ;;
    esac
done
mkdir -p /lib/modules
ln -sfn "$modules" "/lib/modules/$(uname -r)"
echo /usr/sbin/modprobe > /proc/sys/kernel/modprobe
hostname foobar-vm
ip link set lo up
export HOME=/root PATH=/run/foobar-vm/bin:/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export TERM="${TERM:-vt100}"
# Nothing is built in here (emulated, a build takes an hour): `cargo xtask ...` runs the
# xtask the host built, which runs the host's artefacts as they are.
export FOOBAR_PREBUILT=1
mkdir -p /run/foobar-vm/bin
cat > /run/foobar-vm/bin/cargo <<WRAPPER
#!/bin/sh
if [ "\$1" = xtask ]; then shift; exec "$root/target/debug/xtask" "\$@"; fi
exec /root/.cargo/bin/cargo "\$@"
WRAPPER
chmod +x /run/foobar-vm/bin/cargo
# A static sleep kept in memory: the host's root (9p) is gone while the power-off completes.
cp /bin/busybox /run/foobar-vm/busybox 2>/dev/null
finish() {
    echo "$1" > /vm-out/status
    sync
    echo o > /proc/sysrq-trigger
    # PID 1 must not exit (the kernel would panic) while the power-off completes.
    while :; do /run/foobar-vm/busybox sleep 1 2>/dev/null || sleep 1 2>/dev/null; done
}
cd "$root" || finish 125
echo "foobar-vm: kernel $(uname -r), running /vm-out/cmd in $root"
sh /vm-out/cmd
finish $?
