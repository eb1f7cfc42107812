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
        foobar.systemd=*) systemd="${arg#*=}" ;;
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
if [ "${systemd:-0}" = 1 ]; then
    # systemd as PID 1 (`cargo xtask vm --systemd`): a target of sysinit and the commands only
    # (not the host's services), an empty fstab (the host's names disks the guest has not),
    # the commands' output on the console, power-off when they end. Everything written here
    # stays in the guest's overlay.
    : > /etc/fstab
    # Cleaning the host's whole /tmp and /var over 9p takes most of a minute under TCG.
    ln -sf /dev/null /etc/systemd/system/systemd-tmpfiles-setup.service
    cat > /etc/systemd/system/foobar-vm.target <<UNIT
[Unit]
Description=foobar test VM: the host's commands under systemd
Requires=sysinit.target foobar-vm-commands.service
After=sysinit.target
AllowIsolate=yes
UNIT
    cat > /etc/systemd/system/foobar-vm-commands.service <<UNIT
[Unit]
Description=the host's commands
After=sysinit.target
[Service]
Type=oneshot
WorkingDirectory=$root
Environment=HOME=/root PATH=$PATH TERM=$TERM FOOBAR_PREBUILT=1
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
ExecStart=/bin/sh -c 'sh /vm-out/cmd; echo \$\$? > /vm-out/status; sync; systemctl poweroff --force --force'
UNIT
    echo "foobar-vm: kernel $(uname -r), systemd as PID 1 runs /vm-out/cmd in $root"
    exec /lib/systemd/systemd --unit=foobar-vm.target
fi
echo "foobar-vm: kernel $(uname -r), running /vm-out/cmd in $root"
sh /vm-out/cmd
finish $?
