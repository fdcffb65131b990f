# Waits until CRIU is gone: the one wait, for the helper
# (lib/criu/helper/channel.ts) and the restore's watcher (lib/criu/hook/detached.sh).
# Arguments: CRIU's PID, its start time (field 22 of its stat; empty: any
# process of that PID). tail --pid checks every 20 ms without a process per
# check; where tail has no --pid (BusyBox's returns at once) the loop does
# the waiting. The start time keeps a PID another process took from passing
# for CRIU.
alive() { s=; read -r s 2>/dev/null <"/proc/$1/stat" || return 1; set -- ${s##*") "}; shift 19; [ -z "$start" ] || [ "$1" = "$start" ]; }
start=$2; tail --pid="$1" -s 0.02 -f /dev/null 2>/dev/null
while alive "$1"; do sleep 0.05 2>/dev/null || sleep 1; done
