# The iptables lock round (lib/iptables/lock_round.ts), run by sh -c inside
# the target's namespace: both families' restores in parallel, then both
# filter tables read back.
# Arguments, per family (one or two): the restore tool, the read tool, the
# restore's input. Each restore's status and stderr, then each read's status
# and stdout, are printed as blocks "@@KIND INDEX STATUS" ... "@@end": the
# first family's on stdout, the second's on stderr, so that the two run in
# parallel and never interleave. A v6 family in a kernel without IPv6 is
# reported with status "-". Exits 89, before running anything, when a tool
# is missing. Nothing but the tools is spawned, and no file is written.
n=$(($# / 3)); v6=0; [ -d /proc/sys/net/ipv6 ] && v6=1
need() { for tool; do command -v "$tool" >/dev/null 2>&1 || exit 89; done; }
need "$1" "$2"
[ $n = 2 ] && need "$4" "$5"
restore() {
  case $2 in ip6*) [ $v6 = 1 ] || { printf "@@restore %s -\n@@end\n" "$1"; return; } ;; esac
  err=$("$2" -w --noflush 2>&1 >/dev/null <<EOF
$3
EOF
  )
  printf "@@restore %s %s\n%s\n@@end\n" "$1" $? "$err"
}
save() {
  case $2 in ip6*) [ $v6 = 1 ] || return 0 ;; esac
  out=$("$2" -t filter 2>/dev/null </dev/null)
  printf "@@save %s %s\n%s\n@@end\n" "$1" $? "$out"
}
if [ $n = 2 ]; then restore 1 "$4" "$6" >&2 & fi
restore 0 "$1" "$3"
wait
if [ $n = 2 ]; then save 1 "$5" >&2 & fi
save 0 "$2"
wait
