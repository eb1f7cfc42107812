#!/bin/sh
# The Debian package under a real systemd, in the test VM (`cargo xtask test` runs it as
# `cargo xtask vm --systemd --run 'sh vm/package-test.sh'`; docs/vm.md). Installs
# target/package/foobar_*.deb, configures an edge with the web tier on a veth whose other end
# is a client namespace, starts the unit (Type=notify), serves HTTPS, answers `foobar status`
# as the foobar user, reloads, restarts and then upgrades to a second build of the package
# while wrk drives HTTPS keep-alive load (no request may fail), and purges, which must leave
# no user, file, unit, pin or XDP program behind. Exit status 0 when every step held.
set -u
deb=$(ls target/package/foobar_*_amd64.deb 2>/dev/null | head -1)
step() { echo "package-test: $*"; }
fail() {
    echo "package-test: FAILED: $*"
    journalctl -u foobar --no-pager -n 60 2>/dev/null
    exit 1
}
client() { ip netns exec fbclient "$@"; }
[ -n "$deb" ] || fail "no target/package/foobar_*_amd64.deb (cargo xtask package)"
# A container image's policy-rc.d (exit 101: start no service) is no part of a Debian host;
# the guest's root is an overlay, so removing it here leaves the build host's alone.
rm -f /usr/sbin/policy-rc.d

step "install $deb"
dpkg -i "$deb" || fail "dpkg -i"
getent passwd foobar >/dev/null || fail "the foobar user was not created"
systemctl is-enabled --quiet foobar || fail "the unit is not enabled"
systemctl is-active --quiet foobar && fail "the unit started before it was configured"

step "configure: fbv0 (edge, 10.98.0.1) to fbv1 in namespace fbclient (10.98.0.2)"
ip netns add fbclient
ip link add fbv0 type veth peer name fbv1
ip link set fbv1 netns fbclient
ip addr add 10.98.0.1/24 dev fbv0
ip link set fbv0 up
client ip addr add 10.98.0.2/24 dev fbv1
client ip link set fbv1 up
client ip link set lo up
mkdir -p /etc/foobar-test-tls /srv/foobar
openssl req -x509 -nodes -days 2 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout /etc/foobar-test-tls/key.pem -out /etc/foobar-test-tls/chain.pem \
    -subj /CN=www.foobar.test -addext subjectAltName=DNS:www.foobar.test 2>/dev/null ||
    fail "openssl"
chmod 600 /etc/foobar-test-tls/key.pem
echo '<h1>packaged foobar</h1>' > /srv/foobar/index.html
chmod 755 /srv/foobar
chmod 644 /srv/foobar/index.html
cat > /etc/foobar/foobar.toml <<'EOF'
[node]
name = "vm-edge"
interfaces = ["fbv0"]
user = "foobar"

[[web.listener]]
address = "10.98.0.1:443"
tls = true

[[web.certificate]]
chain = "/etc/foobar-test-tls/chain.pem"
key = "/etc/foobar-test-tls/key.pem"
default = true

[[web.site]]
names = ["www.foobar.test"]
root = "/srv/foobar"
EOF
foobar check-config /etc/foobar/foobar.toml || fail "check-config"

step "start"
systemctl start foobar || fail "systemctl start"
systemctl is-active --quiet foobar || fail "not active after start"
get() { client curl -sS --max-time 10 -k --resolve www.foobar.test:443:10.98.0.1 https://www.foobar.test/; }
get | grep -q 'packaged foobar' || fail "HTTPS not served: $(get 2>&1)"
status=$(foobar status) || fail "foobar status"
echo "$status" | grep -q "runs as uid $(id -u foobar);" || fail "foobar status does not show the foobar user: $status"
echo "$status" | grep -q "threads serving clients none" || fail "client threads hold capabilities: $status"
ip -d link show fbv0 | grep -q xdp || fail "no XDP program on fbv0"

step "reload"
sed -i 's|^root = "/srv/foobar"|root = "/srv/foobar"\nhsts_max_age_s = 600|' /etc/foobar/foobar.toml
systemctl reload foobar || fail "systemctl reload"
journalctl -u foobar --no-pager | grep -q 'configuration reloaded' || fail "the reload was not applied"
client curl -sSk -D - -o /dev/null --resolve www.foobar.test:443:10.98.0.1 https://www.foobar.test/ |
    grep -qi 'strict-transport-security: max-age=600' || fail "the reloaded setting is not served"

# wrk's HTTPS keep-alive load across "$@" (a restart, an upgrade): no failed request.
under_load() {
    what=$1
    shift
    client wrk -t1 -c8 -d12s --timeout 30s https://10.98.0.1/ > /tmp/wrk.out 2>&1 &
    load=$!
    sleep 3
    "$@" || fail "$what"
    wait $load
    cat /tmp/wrk.out
    grep -q 'Requests/sec' /tmp/wrk.out || fail "wrk did not run through the $what"
    if grep -q -e 'Socket errors' -e 'Non-2xx' /tmp/wrk.out; then
        fail "requests failed during the $what"
    fi
    systemctl is-active --quiet foobar || fail "not active after the $what"
}

step "restart under load"
first=$(systemctl show -p MainPID --value foobar)
under_load restart systemctl restart foobar
[ "$(systemctl show -p MainPID --value foobar)" != "$first" ] || fail "systemctl restart did not restart"
journalctl -u foobar --no-pager | grep -q 'adopted the listening socket' ||
    fail "the restarted foobar bound anew instead of adopting the stored listener"

step "upgrade to a second build under load"
version=$(dpkg-deb -f "$deb" Version)
rm -rf /tmp/next
dpkg-deb -R "$deb" /tmp/next || fail "unpacking the package"
sed -i "s/^Version: .*/Version: ${version}+vm1/" /tmp/next/DEBIAN/control
dpkg-deb --root-owner-group -b /tmp/next /tmp/foobar-next.deb >/dev/null || fail "building the second package"
before=$(systemctl show -p MainPID --value foobar)
under_load upgrade dpkg -i /tmp/foobar-next.deb
[ "$(dpkg-query -W -f '${Version}' foobar)" = "${version}+vm1" ] || fail "the upgrade did not install"
[ "$(systemctl show -p MainPID --value foobar)" != "$before" ] || fail "the upgrade did not restart foobar"
grep -q 'hsts_max_age_s = 600' /etc/foobar/foobar.toml || fail "the upgrade replaced the edited configuration"

step "purge"
dpkg --purge foobar || fail "dpkg --purge"
getent passwd foobar >/dev/null && fail "the foobar user is left"
getent group foobar >/dev/null && fail "the foobar group is left"
for path in /etc/foobar /usr/sbin/foobar /lib/systemd/system/foobar.service /run/foobar /sys/fs/bpf/foobar \
    /usr/share/doc/foobar; do
    [ -e "$path" ] && fail "$path is left"
done
systemctl cat foobar >/dev/null 2>&1 && fail "the unit is still known"
ip -d link show fbv0 | grep -q xdp && fail "an XDP program is left on fbv0"
step "ok"
exit 0
