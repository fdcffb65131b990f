# shellcheck shell=sh
# The detached roles of criu-hook.sh, each started in a session of its own
# (setsid) and moved out of CRIU's cgroup, so that what kills CRIU with its
# process group or its cgroup does not take them along:
#   sh lib/criu/hook/detached.sh keeper DIR IMAGES CRIUPID HELPER_FLAGS...
#   sh lib/criu/hook/detached.sh watcher CRIUPID START MARKERS WHEN UNLOCK_ARGS...
# Kept out of criu-hook.sh so that CRIU's every action parses less. Every
# file they make or remove: docs/criu.md, "State".

here=${0%/lib/criu/hook/detached.sh}
[ "$here" = "$0" ] && here=.
# shellcheck source=lib/criu/hook/run.sh
. "$here/lib/criu/hook/run.sh"

# Waits until process $1 (started at $2) is gone: tail --pid polls without a
# process per check; a tail without it (BusyBox's returns at once) leaves the
# loop to do the waiting.
wait_gone() {
  tail --pid="$1" -s 0.05 -f /dev/null 2>/dev/null
  while alive_as "$1" "$2"; do sleep 0.05 2>/dev/null || sleep 1; done
}

# Moves this shell to the cgroup v2 `netlock` at the top of the hierarchy,
# out of CRIU's: a unit stop or a cgroup kill that takes CRIU must not take
# it.
leave_cgroup() {
  mnt=
  while read -r _ m t _; do
    [ "$t" = cgroup2 ] && {
      mnt=$m
      break
    }
  done </proc/mounts
  [ -n "$mnt" ] || return 0
  [ -d "$mnt/netlock" ] || mkdir "$mnt/netlock" 2>/dev/null
  echo $$ 2>/dev/null >"$mnt/netlock/cgroup.procs"
  return 0
}

# Removes what runs that were killed left behind: an entry is stale when no
# helper or watcher of it lives (and, for a marker without a watcher, its
# CRIU, by PID and start time, is gone). Helpers and watchers note their PID
# namespace (PIDs of another one say nothing here): only this namespace's
# entries are judged, and never one just made.
sweep() {
  mine=$(readlink /proc/self/ns/pid 2>/dev/null) || return 0
  pid_namespace
  for entry in "$base"/criu-*; do
    [ -e "$entry" ] || continue
    name=${entry##*/criu-}
    pid=${name%%[!0-9]*}
    [ -n "$pid" ] || continue
    owner='' ns=''
    case $entry in
    *.watch) read -r owner ns 2>/dev/null <"$entry" ;;
    *.done | *.finish)
      # A watcher still reads it, or its CRIU still runs.
      [ -e "${entry%.*}.watch" ] && continue
      start=${name#"$pid"-}
      start=${start%%[!0-9]*}
      # Another PID namespace's CRIU (its PID says nothing here).
      ns=${name#"$pid"-"$start"}
      ns=${ns#-}
      ns=${ns%%[!0-9]*}
      [ -n "$ns" ] && [ "$ns" != "$pidns" ] && continue
      alive_as "$pid" "$start" && continue
      rm -f "$entry"
      continue
      ;;
    *)
      [ -d "$entry" ] || continue
      read -r owner 2>/dev/null <"$entry/pid"
      read -r ns 2>/dev/null <"$entry/pidns"
      # An older hook's directory (criu-PID) has no namespace noted.
      case $name in *-*) ;; *) ns=$mine ;; esac
      ;;
    esac
    if [ -z "$owner" ] || [ "$ns" != "$mine" ]; then continue; fi
    kill -0 "$owner" 2>/dev/null && continue
    rm -rf "$entry"
  done
}

role=$1
shift
case $role in
keeper)
  # $1: the helper's directory, $2: the image directory, $3: CRIU's PID; the
  # rest: the helper's flags. Holds both FIFOs open for as long as the
  # helper lives: a request written before the helper reads it is kept, and
  # a hook waiting for an answer gets end-of-file once the helper is gone.
  dir=$1 images=$2 criu=$3
  shift 3
  leave_cgroup
  readlink /proc/self/ns/pid >"$dir/pidns" 2>/dev/null
  sweep
  exec 4<>"$dir/cmd" 5<>"$dir/reply"
  # (In a subshell: dash would move the keeper's own 4 and 5 aside while
  # the helper runs.)
  # The helper reads and writes its directory only (the images through its
  # link there); images under /dev (/dev/shm) take --allow-all, which Deno
  # asks for any path there whatever --allow-read says (denoland/deno#30979).
  # (--allow-all stands alone: Deno refuses it beside another --allow-.)
  set -- "$here/cli.ts" criu-hook --serve "$dir" "$criu" "$@"
  case $images in
  /dev/*) set -- --allow-all "$@" ;;
  *)
    set -- --allow-run=nsenter \
      --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK,NETLOCK_HELPER_LIFETIME_MS \
      --allow-read="$dir" --allow-write="$dir" "$@"
    ;;
  esac
  (
    exec 4>&- 5>&-
    exec deno run --quiet --no-config "$@"
  ) </dev/null >/dev/null
  exec 4>&- 5>&-
  # The image directory's pointer to this helper, if it is still this one's.
  if [ -n "$images" ]; then
    pointed=
    read -r pointed 2>/dev/null <"$images/netlock-helper"
    [ "$pointed" = "$dir" ] && rm -f "$images/netlock-helper"
  fi
  rm -rf "$dir"
  ;;
watcher)
  # $1 $2: CRIU's PID and start time, $3: the run's marker prefix, $4:
  # when to act. After CRIU is gone, it removes what CRIU's restore left
  # and must not, or narrows what it must keep:
  # - "opened" (a host tree; $5 the dumped PID): a lock the restore opened
  #   and whose post-resume never came (the dumped connections stay locked
  #   after a restore that failed before it opened them);
  # - "undone" (a namespace, held open as fd 3; $5 the dumped PID and $6
  #   the images' real path, when the dump planned this restore): unless
  #   the unlock was done, the namespace lock narrows to what the dump took
  #   (its connections and listeners, from the images), so that a namespace
  #   that outlives the failed restore (a pod's) lets its other processes
  #   talk while the dumped connections wait for a retry; without images,
  #   the namespace lock goes.
  # Outside the restore clock, so cli.ts may start.
  criu=$1 start=$2 markers=$3 when=$4
  shift 4
  leave_cgroup
  echo "$$ $(readlink /proc/self/ns/pid)" >"$markers.watch"
  wait_gone "$criu" "$start"
  if [ -e "$markers.finish" ] || { [ "$when" = undone ] && [ ! -e "$markers.done" ]; }; then
    if [ "$when" = opened ]; then
      # The dumped tree's locks, by its dumped PID ($1), in this namespace
      # (the plain hook of this very shell, which is in it).
      CRTOOLS_SCRIPT_ACTION=network-unlock CRTOOLS_INIT_PID=$$ plain_hook "$1"
    elif [ -n "$1" ] && [ -n "$2" ] && [ -e "$2/files.img" ]; then
      narrow_hook "$1" "$2" /proc/self/fd/3
    else
      CRTOOLS_SCRIPT_ACTION='' "$here/cli.ts" unlock -q --name "${NETLOCK_NAME:-NETLOCK}" \
        --netns /proc/self/fd/3
    fi
  fi
  rm -f "$markers.done" "$markers.finish" "$markers.watch"
  ;;
esac
exit 0
