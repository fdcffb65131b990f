#!/usr/bin/env bash
# netlock demo: create a namespace with a TCP listener, show a connection
# succeed, lock the namespace, show a new connection time out, unlock, show
# it succeed again, and clean up. Needs root, deno, iproute2 and iptables.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

NS="netlock-demo-$$"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  ip netns delete "$NS" 2>/dev/null || true
}
trap cleanup EXIT

netlock() { deno run --allow-run=nsenter cli.ts "$@"; }
connect() {
  nsenter --net="/run/netns/$NS" -- deno run --no-config --allow-net scripts/tcp_tool.ts \
    connect 127.0.0.1 8080 "$1"
}
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
step() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
expect() { # expect WANTED GOT
  if [ "$1" != "$2" ]; then echo "demo FAILED: expected '$1', got '$2'" >&2; exit 1; fi
  echo "-> $2 (as expected)"
}

step "create namespace $NS with a TCP echo server on 127.0.0.1:8080"
ip netns add "$NS"
ip -n "$NS" link set lo up
coproc SERVER { exec nsenter --net="/run/netns/$NS" -- deno run --no-config --allow-net \
  scripts/tcp_tool.ts serve 127.0.0.1:8080; }
SERVER_PID=$SERVER_PID
read -r ready <&"${SERVER[0]}"
expect ready "$ready"

step "connect before the lock"
expect ok "$(connect 1000)"

step "netlock lock --netns $NS"
netlock lock --netns "$NS"
netlock status --netns "$NS"

step "connect while locked (2 s deadline): the SYN is dropped, nothing answers"
expect timeout "$(connect 2000)"

step "netlock unlock --netns $NS"
netlock unlock --netns "$NS"

step "connect after the unlock"
expect ok "$(connect 1000)"

step "rules left in the namespace after lock + unlock (none)"
ip netns exec "$NS" nft list ruleset
echo "(empty)"
echo
echo "demo passed: traffic stopped while locked and resumed after unlock"
