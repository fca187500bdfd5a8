#!/usr/bin/env bash
# Runs examples/virtual-server.toml (Debian 12, as root) on what it needs, made here and removed
# on exit: a network namespace `resmon-vs` with a veth pair (vs0, vs1), a 16 MiB tmpfs on
# /run/resmon-vs/data, dnsmasq answering mail.example.test -> 192.0.2.10 on 127.0.0.1:5353 in
# the namespace, and a systemd user manager (scripts/user-systemd) running vs-store.service.
#
#   examples/virtual-server.sh                  # set up, run the agent in the foreground, clean up
#   examples/virtual-server.sh setup DIR NETNS  # only set up (the end-to-end test uses these)
#   examples/virtual-server.sh teardown DIR NETNS
#
# While it runs, from another shell:
#   ip -n resmon-vs addr del 192.0.2.10/24 dev vs0     # the ip fails at once and is restored
#   SYSTEMD_BUS=unix:path=/run/resmon-vs/systemd/run/bus
#   DBUS_SESSION_BUS_ADDRESS=$SYSTEMD_BUS systemctl --user stop vs-store.service   # a failure
#   dd if=/dev/zero of=/run/resmon-vs/data/fill bs=64k   # data fails, store and routing go down
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

setup() {
  local dir=$1 netns=$2
  mkdir -p "$dir/data" "$dir/state" "$dir/systemd/run/systemd/user"
  ip netns add "$netns"
  ip -n "$netns" link set lo up
  ip -n "$netns" link add vs0 type veth peer name vs1
  ip -n "$netns" link set vs0 up
  ip -n "$netns" link set vs1 up
  mountpoint -q "$dir/data" || mount -t tmpfs -o size=16m resmon-vs "$dir/data"
  ip netns exec "$netns" dnsmasq --conf-file=/dev/null --bind-interfaces \
    --listen-address=127.0.0.1 --port=5353 --no-resolv --no-hosts \
    --address=/mail.example.test/192.0.2.10 --pid-file="$dir/dnsmasq.pid"
  cat >"$dir/systemd/run/systemd/user/vs-store.service" <<UNIT
[Unit]
Description=The virtual server's store (a stand-in)
[Service]
ExecStart=/bin/sleep infinity
UNIT
  "$root/scripts/user-systemd" start "$dir/systemd" >/dev/null
}

teardown() {
  local dir=$1 netns=$2
  "$root/scripts/user-systemd" stop "$dir/systemd" || true
  [ -s "$dir/dnsmasq.pid" ] && kill "$(cat "$dir/dnsmasq.pid")" 2>/dev/null || true
  umount -l "$dir/data" 2>/dev/null || true
  ip netns del "$netns" 2>/dev/null || true
}

case ${1:-run} in
setup) setup "$2" "$3" ;;
teardown) teardown "$2" "$3" ;;
run)
  need=()
  command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
  command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)
  [ -x /usr/lib/ocf/resource.d/heartbeat/Dummy ] || need+=(resource-agents)
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
  (cd "$root" && cargo build --release -p resmon)
  teardown /run/resmon-vs resmon-vs
  trap 'teardown /run/resmon-vs resmon-vs' EXIT
  setup /run/resmon-vs resmon-vs
  "$root/target/release/resmon" validate --config "$root/examples/virtual-server.toml"
  ip netns exec resmon-vs "$root/target/release/resmon" run --config "$root/examples/virtual-server.toml"
  ;;
*)
  echo "usage: $0 [setup DIR NETNS | teardown DIR NETNS]" >&2
  exit 2
  ;;
esac
