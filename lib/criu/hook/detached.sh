# shellcheck shell=sh
# The processes criu-hook.sh starts detached, each in a session of its own
# (setsid):
#   sh lib/criu/hook/detached.sh keeper DIR IMAGES CRIUPID START dump PID [LINK]|restore
#   sh lib/criu/hook/detached.sh watcher CRIUPID START MARKERS PLACE DUMPED [IMAGES]
# The keeper starts the warm helper (cli.ts criu-hook --serve) and holds
# its FIFOs; the watcher waits for a restore's CRIU to end. What they make
# or remove: docs/criu.md, "State".

here=${0%/lib/criu/hook/detached.sh}
[ "$here" = "$0" ] && here=.
# shellcheck source=lib/criu/hook/actions.sh
. "$here/lib/criu/hook/actions.sh"

# The detached roles, out of CRIU's cgroup first: into the cgroup v2
# `netlock` at the top of the hierarchy, where a unit stop or a cgroup kill
# that takes CRIU does not reach.
while read -r _ mnt type _; do
  [ "$type" = cgroup2 ] || continue
  [ -d "$mnt/netlock" ] || mkdir "$mnt/netlock" 2>/dev/null
  echo $$ 2>/dev/null >"$mnt/netlock/cgroup.procs"
  break
done </proc/mounts
role=$1
shift
case $role in
keeper)
  # $1: the helper's directory, $2: the image directory, $3: CRIU's PID;
  # the rest: the helper's. Holds both FIFOs open for as long as the
  # helper lives: a request written before the helper reads it is kept,
  # and a hook waiting for an answer gets end-of-file once it is gone.
  dir=$1 images=$2 criu=$3
  shift 3
  mine=$(readlink /proc/self/ns/pid 2>/dev/null) && echo "$mine" >"$dir/pidns"
  # Removes what killed runs left: an entry is stale when no helper or
  # watcher of it lives (a marker without a watcher: when its CRIU, by
  # PID and start time, is gone too). Only this PID namespace's entries
  # are judged (PIDs of another say nothing here), never one just made.
  pid_namespace
  for entry in "$base"/criu-*; do
    [ -n "$mine" ] && [ -e "$entry" ] || continue
    name=${entry##*/criu-}
    pid=${name%%[!0-9]*}
    [ -n "$pid" ] || continue
    owner='' ns=''
    case $entry in
    *.watch) read -r owner ns 2>/dev/null <"$entry" ;;
    *.done | *.finish)
      # A watcher still reads it, or its CRIU (of this namespace) runs.
      [ -e "${entry%.*}.watch" ] && continue
      born=${name#"$pid"-}
      born=${born%%[!0-9]*}
      ns=${name#"$pid"-"$born"}
      ns=${ns#-}
      ns=${ns%%[!0-9]*}
      [ -n "$ns" ] && [ "$ns" != "$pidns" ] && continue
      started_of "$pid" && [ "$started" = "$born" ] && continue
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
    kill -0 "$owner" 2>/dev/null || rm -rf "$entry"
  done
  exec 4<>"$dir/cmd" 5<>"$dir/reply"
  # The helper reads and writes its directory only (the images through
  # its link there); images under /dev (/dev/shm) take --allow-all, which
  # Deno asks for any path there whatever --allow-read says
  # (denoland/deno#30979), and which stands alone (Deno refuses it beside
  # another --allow-).
  set -- "$here/cli.ts" criu-hook --serve "$dir" "$criu" "$@"
  cli_permissions
  case $images in
  /dev/*) perms=--allow-all ;;
  *) set -- --allow-env=NETLOCK_HELPER_LIFETIME_MS,NETLOCK_HOLD,NETLOCK_HOLD_KEEP_MS --allow-read="$dir" --allow-write="$dir" "$@" ;;
  esac
  # The helper holds (NETLOCK_HOLD=1): libc's netlink calls, FFI (only here).
  [ "$NETLOCK_HOLD" = 1 ] && [ "$perms" != --allow-all ] && set -- --allow-ffi "$@"
  # (In a subshell: dash would move the keeper's own 4 and 5 aside while
  # the helper runs.)
  (
    exec 4>&- 5>&-
    # shellcheck disable=SC2086 # the shebang's flags, one word each
    exec deno run --quiet --no-config $perms "$@"
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
  # $1 $2: CRIU's PID and start time, $3: the run's marker prefix, $4 the
  # tree's place, $5 the dumped PID, $6 (a namespace's) the images' real
  # path; a namespace's watcher holds it open as fd 3. Once CRIU is gone,
  # it removes what the restore left and must not, or narrows what it
  # must keep (outside the restore clock: cli.ts may start):
  # - host: a lock the restore opened and whose post-resume never came;
  # - netns: unless the unlock was done, the namespace lock narrows to
  #   what the dump took (from the images), so that a namespace that
  #   outlives the failed restore (a pod's) lets its other processes talk
  #   while the dumped connections wait for a retry; without images, the
  #   namespace lock goes.
  criu=$1 start=$2 markers=$3 place=$4
  shift 4
  echo "$$ $(readlink /proc/self/ns/pid)" >"$markers.watch"
  sh "$here/lib/criu/helper/wait_gone.sh" "$criu" "$start"
  if [ -e "$markers.finish" ] || { [ "$place" = netns ] && [ ! -e "$markers.done" ]; }; then
    if [ "$place" = host ]; then
      criu_hook --unlock-kept "$1"
    elif [ -n "$1" ] && [ -n "$2" ] && [ -e "$2/files.img" ]; then
      set -- "$here/cli.ts" criu-hook --narrow "$1" "$2" /proc/self/fd/3
      # (Images under /dev take --allow-all, as the helper's.)
      cli_permissions
      case $5 in
      /dev/*) perms=--allow-all ;;
      *) set -- --allow-read="$5" "$@" ;;
      esac
      # shellcheck disable=SC2086 # the shebang's flags, one word each
      deno run --quiet --no-config $perms "$@"
    else
      "$here/cli.ts" unlock -q --name "${NETLOCK_NAME:-NETLOCK}" --netns /proc/self/fd/3
    fi
  fi
  rm -f "$markers.done" "$markers.finish" "$markers.watch"
  ;;
esac
exit 0
