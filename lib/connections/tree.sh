# The probe of a process tree (lib/connections/discover.ts), run by sh -c
# in netlock's namespace.
# Arguments: the root's PID, 1 to list the processes of the root's cgroup
# subtree, 1 to print the tree's fd links after a "fds" line.
# Prints "tree PIDS", "state S", "start TICKS", "netns own|other" (the
# root's network namespace against this shell's, netlock's), "cgroup PATH", "own PATH",
# "mount DIR" (cgroup v2), "members PIDS", then "fds" and one link a line;
# exits 3 when the root does not exist. Shell builtins only, but for the
# cgroup's find/cat and the last find (exec'd).
root=$1 members=$2 fds=$3; [ -d "/proc/$root" ] || { echo "netlock-tree: no such process" >&2; exit 3; }
pids=$root todo=$root
while [ -n "$todo" ]; do next=; for p in $todo; do
  for f in /proc/$p/task/*/children; do c=; read -r c <"$f" 2>/dev/null; next="$next $c"; done
done; set -- $next; todo=$*; pids="$pids${todo:+ $todo}"; done
echo "tree $pids"
stat=; read -r stat <"/proc/$root/stat"; set -- ${stat##*") "}; echo "state $1"; shift 19; echo "start $1"
# shellcheck disable=SC3013 # -ef: dash, bash and BusyBox's ash have it
if [ "/proc/$root/ns/net" -ef /proc/self/ns/net ]; then echo "netns own"; else echo "netns other"; fi
cg() { while IFS= read -r l; do case $l in 0::*) echo "$1 ${l#0::}";; esac; done; }
cg cgroup <"/proc/$root/cgroup"; cg own </proc/self/cgroup
mnt=
# shellcheck disable=SC2034 # the fields of a line of /proc/mounts, by position
while read -r dev dir type rest; do [ "$type" = cgroup2 ] && { mnt=$dir; break; }; done </proc/mounts
[ -n "$mnt" ] && echo "mount $mnt"
if [ "$members" = 1 ] && [ -n "$mnt" ]; then
  while IFS= read -r l; do case $l in 0::*) g=${l#0::};; esac; done <"/proc/$root/cgroup"
  # shellcheck disable=SC2046 # the PIDs, one line
  echo members $(find "$mnt${g%/}" -name cgroup.procs -exec cat {} + 2>/dev/null)
fi
[ "$fds" = 1 ] || exit 0
echo fds; set --; for p in $pids; do set -- "$@" "/proc/$p/fd"; done
exec find "$@" -mindepth 1 -printf '%l\n' 2>/dev/null
