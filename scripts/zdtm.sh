#!/usr/bin/env bash
# CRIU's own zdtm tests of the network lock and of TCP connections, with
# netlock as the lock: each test's own lock option replaced by
# `--network-lock skip` and criu-hook.sh as the action script
# (`zdtm.py run --script`), once per backend (NETLOCK_BACKEND), serial, then
# socket-tcp and socket-tcp6 two at once (`-p 2`). Run as root:
#   deno task zdtm            (or: bash scripts/zdtm.sh [iptables|nftables]...)
# The zdtm tree is the CRIU source ../shared/criu/build.sh unpacked (the
# one CRIU_BIN was built in, else CRIU_SRC, else build.sh's default). Logs go
# to a temporary directory, kept and named when a test fails.
# A test zdtm skips (a missing kernel feature) fails the run under CI.
set -euo pipefail
cd "$(dirname "$0")/.."
netlock=$PWD
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(iptables nftables)

# The tests: the lock's own (host trees and a namespace that outlives the
# tree), TCP connections in every state CRIU's TCP tests cover here.
serial=(
  net_lock_socket_iptables net_lock_socket_iptables6 net_lock_socket_nftables
  net_lock_socket_nftables6 netns_lock_iptables netns_lock_nftables socket-tcp socket-tcp6
  socket-tcp-local socket-tcpbuf socket-tcp-ipt-nfconntrack socket-tcp-nft-nfconntrack
)
parallel=(socket-tcp socket-tcp6)
# Root lacks CAP_SYS_RESOURCE on these machines: a test run as another user
# fails at dump ("Can't get rlimit"), with CRIU's own lock too. zdtm's
# `suid` flag runs it as root; these tests lack it.
need_suid=(socket-tcp socket-tcp6 socket-tcp-local socket-tcpbuf)

# The CRIU tree: CRIU_SRC, else the one CRIU_BIN sits in (DIR/criu/criu),
# else build.sh's (which builds it when missing).
src=${CRIU_SRC:-}
if [ -z "$src" ] && [ -n "${CRIU_BIN:-}" ]; then src=$(cd "$(dirname "$CRIU_BIN")/.." && pwd); fi
if [ -z "$src" ] || [ ! -f "$src/test/zdtm.py" ]; then
  build=""
  for candidate in "$netlock/../shared/criu/build.sh" /work/shared/criu/build.sh; do
    [ -f "$candidate" ] && { build=$candidate; break; }
  done
  [ -n "$build" ] || { echo "zdtm: no CRIU tree (set CRIU_SRC or CRIU_BIN)" >&2; exit 1; }
  src=$(cd "$(dirname "$(sh "$build" | tail -n 1)")/.." && pwd)
fi
criu=$src/criu/criu
[ -x "$criu" ] || { echo "zdtm: no CRIU binary at $criu" >&2; exit 1; }

# zdtm's needs: Debian's python3 with its protobuf (pycriu), libnl for the
# test programs, CRIU's lib (pycriu's generated modules), deno for the hook.
if ! /usr/bin/python3 -c 'import google.protobuf' 2>/dev/null ||
  ! dpkg -s libnl-route-3-dev >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-protobuf libnl-route-3-dev >/dev/null
fi
command -v deno >/dev/null || { echo "zdtm: criu-hook.sh needs deno on PATH" >&2; exit 1; }
make -C "$src" -j"$(nproc)" lib >/dev/null 2>&1 || { echo "zdtm: make lib failed in $src" >&2; exit 1; }

logs=$(mktemp -d "${TMPDIR:-/tmp}/netlock-zdtm.XXXXXX")
wrapper=$logs/criu
# CRIU with every --network-lock choice replaced by skip (dump, pre-dump and
# restore also get it when they name none): the hook is the only lock.
cat >"$wrapper" <<EOF
#!/bin/sh
n=\$#
skip=0
for arg in "\$@"; do
  if [ \$skip = 1 ]; then set -- "\$@" skip; skip=0; continue; fi
  case \$arg in
  --network-lock) set -- "\$@" "\$arg"; skip=1 ;;
  --network-lock=*) set -- "\$@" --network-lock=skip ;;
  *) set -- "\$@" "\$arg" ;;
  esac
done
shift \$n
case \$1 in dump | pre-dump | restore) verb=\$1; shift; set -- "\$verb" --network-lock skip "\$@" ;; esac
exec "$criu" "\$@"
EOF
chmod +x "$wrapper"

# The suid flag, added to a copy of each test's description for this run;
# the originals come back when it ends.
restore_descs() {
  for test in "${need_suid[@]}"; do
    desc=$src/test/zdtm/static/$test.desc
    [ -f "$logs/$test.desc" ] && cp "$logs/$test.desc" "$desc"
  done
  return 0
}
trap restore_descs EXIT
for test in "${need_suid[@]}"; do
  desc=$src/test/zdtm/static/$test.desc
  cp "$desc" "$logs/$test.desc"
  grep -q suid "$desc" || sed -i "s/'flags': '/'flags': 'suid /" "$desc"
done

failed=0
passed=0
# One zdtm run: its summary lines, its log kept.
zdtm() {
  local label=$1
  shift
  local log=$logs/$label.log
  local status=0
  (cd "$src/test" && PATH=/usr/bin:$PATH /usr/bin/python3 zdtm.py run --keep-going -f h,ns \
    --criu-bin "$wrapper" --script "$netlock/criu-hook.sh" "$@") >"$log" 2>&1 || status=$?
  local ran skipped
  ran=$(grep -cE '^=+ Test zdtm/static/\S+ PASS =+$' "$log" || true)
  skipped=$(grep -cE '^Skipping zdtm/' "$log" || true)
  if [ "$status" -ne 0 ] || grep -qE 'FAIL' "$log" || { [ "$skipped" -ne 0 ] && [ "${CI:-}" != "" ]; }; then
    echo "FAIL $label (exit $status, $ran passed, $skipped skipped): $log"
    grep -E 'FAIL|Skipping zdtm/|Network should|Error \(' "$log" | head -n 20 | sed 's/^/  /'
    failed=$((failed + 1))
  else
    echo "ok   $label ($ran passed, $skipped skipped)"
    passed=$((passed + 1))
  fi
}

for backend in "${backends[@]}"; do
  export NETLOCK_BACKEND=$backend
  for test in "${serial[@]}"; do zdtm "$backend-$test" -t "zdtm/static/$test"; done
  zdtm "$backend-parallel" -p 2 "${parallel[@]/#/-tzdtm/static/}"
done
echo "zdtm: ${passed} passed, ${failed} failed (logs: $logs)"
if [ "$failed" -ne 0 ]; then exit 1; fi
restore_descs
rm -rf "$logs"
