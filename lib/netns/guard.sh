# netlock's guard (lib/netns/guard.ts), run by sh -c inside the target's
# namespace ahead of a tool: with shell builtins only (no fork before the
# exec), it checks that the namespace is not netlock's own and has IPv6
# when the tool needs it, then execs the tool (or runs a shell program).
# Arguments: netlock's PID (- for no check), 1 when the tool needs IPv6,
# 1 to report the namespace's inode, then the tool and its arguments.
# Prints "netlock-guard INODE|- 0|1" (the inode, IPv6) before the tool runs,
# or exits 86 (own namespace), 87 (no IPv6) or 88 (cannot see netlock's
# namespace) with a "netlock-guard:" line on stderr.
own=$1 six=$2 report=$3; shift 3; v6=0; ns=-; [ -d /proc/sys/net/ipv6 ] && v6=1
if [ "$own" != - ]; then
  [ -e "/proc/$own/ns/net" ] || { echo "netlock-guard: cannot see netlock's namespace" >&2; exit 88; }
  # shellcheck disable=SC3013 # -ef: dash, bash and BusyBox's ash have it
  [ /proc/self/ns/net -ef "/proc/$own/ns/net" ] && { echo "netlock-guard: own namespace" >&2; exit 86; }
fi
[ "$six" = 1 ] && [ $v6 = 0 ] && { echo "netlock-guard: no IPv6" >&2; exit 87; }
[ "$report" = 1 ] && while read -r key value; do [ "$key" = ino: ] && ns=$value; done \
  3</proc/self/ns/net </proc/self/fdinfo/3
echo "netlock-guard ${ns:--} $v6"
# A shell program (/bin/sh -c SCRIPT NAME ARGS...) runs in this shell, as
# that sh would: one process fewer (about 1 ms of a lock).
if [ "$1" = /bin/sh ] && [ "$2" = -c ] && [ $# -ge 4 ]; then
  program=$3; shift 4; unset own six report v6 ns key value
  eval "$program"; exit
fi
exec "$@"
