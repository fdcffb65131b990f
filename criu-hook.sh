#!/bin/sh
# netlock as CRIU's action script:
#   criu dump --network-lock skip --action-script /path/to/criu-hook.sh ...
#   criu restore --network-lock skip --action-script /path/to/criu-hook.sh ...
#
# CRIU runs this for every action and waits for it, several times inside the
# application's frozen window, so it costs no Deno start there:
# - pre-dump / pre-restore (before anything is frozen): start netlock's warm
#   helper (cli.ts criu-hook --serve). For a dump it arms the lock ahead, or,
#   for a tree in CRIU's own namespace (which CRIU never sends network-lock),
#   locks it now: by its cgroup when every TCP socket of the tree is its
#   cgroup's, else by its connections. The helper watches CRIU: when CRIU is
#   gone and the tree runs again (--leave-running, a failed dump, a CRIU that
#   died), it unlocks; after a final dump it keeps the dumped connections
#   locked for the restore, and nothing more.
# - network-lock / network-unlock / post-dump: one request line to the
#   helper and one answer line back, with shell builtins only; without a
#   helper, cli.ts does the work itself (the plain hook). At post-dump a tree
#   in CRIU's namespace is locked by connection, to outlive it.
# - setup-namespaces / post-setup-namespaces (restore): tell the helper the
#   restored PID, so it arms the unlock; and watch CRIU.
# - every other action: nothing.
# After a dump's lock the helper writes how to unlock it into CRIU's image
# directory (netlock-unlock: key=value lines; netlock-unlock.nft: the
# script). A restore from those images starts no helper: network-unlock (a
# tree in its own namespace) or post-restore (a tree in CRIU's namespace)
# runs the script (one nft: it opens the lock), and post-resume (after the
# restore clock, traffic flowing) removes what is left of it.
# The helper and the watchers run detached (a session of their own, out of
# CRIU's cgroup): what kills CRIU with its process group or its cgroup does
# not take them along. Every file this script and the helper make, who
# removes it and when: docs/criu.md, "State".
# Options come from NETLOCK_BACKEND, NETLOCK_NAME, NETLOCK_MARK, as for cli.ts.

here=${0%/*}
[ "$here" = "$0" ] && here=.

# The start time of process $1 (field 22 of its stat), into $started; 1
# when it does not exist. Builtins only.
started_of() {
  started=
  stat=
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  # The name in parentheses may hold spaces: fields count from its end.
  set -- ${stat##*") "}
  shift 19
  started=$1
}

# Whether process $1 is still the one that started at $2.
alive_as() {
  started_of "$1" && [ "$started" = "$2" ]
}

# Waits until process $1 (started at $2) is gone: tail --pid polls without a
# process per check; a tail without it (BusyBox's returns at once) leaves the
# loop to do the waiting.
wait_gone() {
  tail --pid="$1" -s 0.05 -f /dev/null 2>/dev/null
  while alive_as "$1" "$2"; do sleep 0.05 2>/dev/null || sleep 1; done
}

# The cgroup v2 the helper and watchers move to, out of CRIU's: a unit stop
# or a cgroup kill that takes CRIU must not take them.
leave_cgroup() {
  mnt=
  while read -r _ m t _; do
    [ "$t" = cgroup2 ] && { mnt=$m; break; }
  done </proc/mounts
  [ -n "$mnt" ] || return 0
  [ -d "$mnt/netlock" ] || mkdir "$mnt/netlock" 2>/dev/null
  echo $$ 2>/dev/null >"$mnt/netlock/cgroup.procs"
  return 0
}

# cli.ts as the plain hook, told the PID the tree was dumped with ($1): a
# tree restored in a PID namespace of its own (a container) has a new PID
# outside it, and the locks kept since the dump bear the old one.
plain_hook() {
  NETLOCK_DUMPED_PID=$1 deno run --quiet --no-config --allow-run=nsenter \
    --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK,NETLOCK_DUMPED_PID \
    "$here/cli.ts"
}

# Run detached: a session of its own (setsid without a fork: a background
# job of this shell leads no process group).
detach=setsid
command -v setsid >/dev/null 2>&1 || detach=

# One private base directory.
base=/run/netlock
[ -d "$base" ] || mkdir -m 0700 "$base" 2>/dev/null || base=${TMPDIR:-/tmp}

# Removes what runs that were killed left behind: an entry is stale when no
# helper or watcher of it lives (and, for a marker without a watcher, its
# CRIU, by PID and start time, is gone). Helpers and watchers note their PID
# namespace (PIDs of another one say nothing here): only this namespace's
# entries are judged, and never one just made.
sweep() {
  mine=$(readlink /proc/self/ns/pid 2>/dev/null) || return 0
  for entry in "$base"/criu-*; do
    [ -e "$entry" ] || continue
    name=${entry##*/criu-}
    pid=${name%%[!0-9]*}
    [ -n "$pid" ] || continue
    owner= ns=
    case $entry in
    *.watch) read -r owner ns 2>/dev/null <"$entry" ;;
    *.done | *.finish)
      # A watcher still reads it, or its CRIU still runs.
      [ -e "${entry%.*}.watch" ] && continue
      start=${name#"$pid"-}
      start=${start%%[!0-9]*}
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
    [ -n "$owner" ] && [ "$ns" = "$mine" ] || continue
    kill -0 "$owner" 2>/dev/null && continue
    rm -rf "$entry"
  done
}

# The detached roles: this script run again by itself (NETLOCK_HOOK_ROLE).
role=$NETLOCK_HOOK_ROLE
unset NETLOCK_HOOK_ROLE
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
  # The dumped tree's namespace, held for as long as the helper lives: after
  # a final dump its lock narrows to the dumped connections there.
  if [ -n "$CRTOOLS_INIT_PID" ] && exec 6<"/proc/$CRTOOLS_INIT_PID/ns/net"; then
    set -- "$@" "--netns-handle=/proc/$$/fd/6"
  fi 2>/dev/null
  # (In a subshell: dash would move the keeper's own 4-6 aside while the
  # helper runs, and the namespace's handle with them.)
  (
    exec 4>&- 5>&- 6<&-
    exec deno run --quiet --no-config --allow-run=nsenter \
      --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK,NETLOCK_HELPER_LIFETIME_MS \
      --allow-read="$dir" --allow-write="$dir" \
      "$here/cli.ts" criu-hook --serve "$dir" "$criu" "$@"
  ) </dev/null >/dev/null
  exec 4>&- 5>&- 6<&-
  # The image directory's pointer to this helper, if it is still this one's.
  if [ -n "$images" ]; then
    pointed=
    read -r pointed 2>/dev/null <"$images/netlock-helper"
    [ "$pointed" = "$dir" ] && rm -f "$images/netlock-helper"
  fi
  rm -rf "$dir"
  exit 0
  ;;
watcher)
  # $1 $2: CRIU's PID and start time, $3: the run's marker prefix, $4:
  # when to unlock; the rest: what to give cli.ts unlock. After CRIU is
  # gone, it removes what CRIU's restore left and must not: "opened" (a
  # host tree), a lock the restore opened and whose post-resume never came
  # (the dumped connections stay locked after a restore that failed before
  # it opened them); "undone" (a namespace), the namespace's lock unless the
  # unlock was done and nothing was left for post-resume (a connection lock
  # the dump narrowed it to stays). Outside the restore clock, so cli.ts may
  # start; the namespace is held open as fd 3.
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
    else
      CRTOOLS_SCRIPT_ACTION= "$here/cli.ts" unlock -q --name "${NETLOCK_NAME:-NETLOCK}" "$@"
    fi
  fi
  rm -f "$markers.done" "$markers.finish" "$markers.watch"
  exit 0
  ;;
esac

# CRIU's PID: the one in CRTOOLS_IMAGE_DIR (/proc/CRIU/fd/N), which holds
# when a wrapper runs this script; else this script's parent.
criu=${CRTOOLS_IMAGE_DIR#/proc/}
criu=${criu%%/*}
case $CRTOOLS_IMAGE_DIR in /proc/[0-9]*/fd/*) ;; *) criu=$PPID ;; esac
case $criu in '' | *[!0-9]*) criu=$PPID ;; esac
# One CRIU run: its PID and start time (a PID alone repeats across PID
# namespaces and over time): its entries are criu-PID-START*.
started_of "$criu"
start=$started
run=$base/criu-$criu-$start
# The image directory points to this run's helper (a directory made with
# mktemp at pre-dump or pre-restore): unique to the run, whatever its PID.
pointer=${CRTOOLS_IMAGE_DIR:+$CRTOOLS_IMAGE_DIR/netlock-helper}

# This run's helper directory, from the pointer, into $dir (empty: none).
helper_dir() {
  dir=
  [ -n "$pointer" ] && read -r dir 2>/dev/null <"$pointer"
  # Only this run's (a pointer left by an earlier run names another).
  case $dir in "$run".*) ;; *) dir= ;; esac
}

# Sends one request; 0 ok, 1 failed (message on stderr), 2 no helper answered.
ask() {
  [ -n "$dir" ] && [ -p "$dir/cmd" ] || return 2
  read -r helper 2>/dev/null <"$dir/pid" && kill -0 "$helper" 2>/dev/null || return 2
  # Read-write: opening never blocks; the keeper holds the pipe open.
  printf '%s\n' "$1" 1<>"$dir/cmd" 2>/dev/null || return 2
  [ "$2" = answer ] || return 0
  # The helper holds the other end: end-of-file means it is gone.
  read -r answer 2>/dev/null <"$dir/reply" || return 2
  case $answer in
  ok | ready*) return 0 ;;
  "error "*)
    printf 'error: %s\n' "${answer#error }" >&2
    return 1
    ;;
  esac
  return 2
}

# The restore's plan, written by the dump's helper (version 1, key=value
# lines, read by key): kind (netns: a tree in a namespace of its own; host:
# a tree in CRIU's namespace), backend, pid (the dumped root, host), and
# finish=1 when post-resume has work left.
# (Empty without CRIU's image directory: then no plan is ever found.)
plan=${CRTOOLS_IMAGE_DIR:+$CRTOOLS_IMAGE_DIR/netlock-unlock}
kind= backend= planned= finish_left= version=
# (Only the restore's actions read it: the dump's, inside the frozen window, do not.)
plan_read=
case $CRTOOLS_SCRIPT_ACTION in pre-restore | setup-namespaces | network-unlock | post-restore) ;; *) plan_read=no ;; esac
if [ -z "$plan_read" ] && [ -n "$plan" ] && [ -f "$plan" ]; then
  while IFS='=' read -r key value; do
    case $key in
    version) version=$value ;;
    kind) kind=$value ;;
    backend) backend=$value ;;
    pid) planned=$value ;;
    finish) finish_left=$value ;;
    esac
  done <"$plan"
fi
case $version/$kind in 1/host | 1/netns) ;; *) kind= ;; esac
# A restore's markers: left by a planned unlock for post-resume (CRIU has
# closed its image directory by then, so they are found by CRIU's PID and
# start time; .finish holds the plan's kind and dumped PID), and by any
# unlock for the restore's watcher.
markers=$run
finish=$markers.finish done=$markers.done watching=$markers.watch

# Creates a marker file holding $2, never through one that exists
# (noclobber: never write through a link someone left in a shared $TMPDIR,
# and a run of another PID namespace with the same CRIU PID and start time
# keeps its own). No subshell: every fork counts inside CRIU's clock.
create() {
  set -C
  printf '%s\n' "$2" 2>/dev/null >"$1"
  set -- $?
  set +C
  return "$1"
}

# Unlocks as the dump's helper planned it: 0 done, 2 not done (no plan, not
# a namespace of its own, nft failed: cli.ts then reads the state and
# unlocks whatever is left).
unlock_from_plan() {
  case $kind in
  netns)
    case $CRTOOLS_INIT_PID in '' | *[!0-9]*) return 2 ;; esac
    # Never netlock's own namespace (the guard of every other path).
    [ /proc/"$CRTOOLS_INIT_PID"/ns/net -ef /proc/self/ns/net ] && return 2
    # A failure is cli.ts's to report (it reads what is really there).
    nsenter --target "$CRTOOLS_INIT_PID" --net -- nft -f - <"$plan.nft" 2>/dev/null || return 2
    ;;
  host) nft -f - <"$plan.nft" 2>/dev/null || return 2 ;;
  *) return 2 ;;
  esac
  # Traffic flows; post-resume removes what is left. (Without the marker,
  # cli.ts removes it now.)
  [ "$finish_left" = 1 ] || return 0
  create "$finish" "$kind $planned" || return 2
}

# Marks the unlock done, for the restore's watcher (if one watches).
unlocked() {
  [ -e "$watching" ] && create "$done"
  return 0
}

# Starts the restore's watcher, detached: $1 when to unlock, the rest what
# to give cli.ts unlock once CRIU is gone (see the watcher role above).
# Once per run.
watch() {
  create "$watching" || return 0
  NETLOCK_HOOK_ROLE=watcher $detach "$0" "$criu" "$start" "$markers" "$@" </dev/null >/dev/null 2>&1 &
}

# Starts the warm helper ($@: its flags) in a directory of its own, which
# the image directory points to; 1 when it cannot (no image directory, no
# start time, mktemp, mkfifo or the pointer failed).
start_helper() {
  [ -n "$pointer" ] && [ -n "$start" ] || return 1
  dir=$(mktemp -d "$run.XXXXXX" 2>/dev/null) || return 1
  if ! mkfifo -m 0600 "$dir/cmd" "$dir/reply" || ! printf '%s\n' "$dir" 2>/dev/null >"$pointer"; then
    rm -rf "$dir"
    return 1
  fi
  images=
  [ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] && images=$(cd -P "$CRTOOLS_IMAGE_DIR" 2>/dev/null && pwd)
  # The helper writes the restore's plan through a link in its directory
  # (Deno cannot use CRIU's /proc path; a comma would split its permission list).
  [ -n "$images" ] && ln -s "$images" "$dir/images" && set -- "$@" "--images=$dir/images"
  NETLOCK_HOOK_ROLE=keeper $detach "$0" "$dir" "$images" "$criu" "--criu-start=$start" "$@" </dev/null >/dev/null &
  echo $! >"$dir/pid"
}

case $CRTOOLS_SCRIPT_ACTION in
pre-dump)
  if ! start_helper --ready; then
    # No helper: the plain hook decides (it refuses a tree in CRIU's namespace).
    exec "$here/cli.ts"
  fi
  # Nothing is frozen yet: wait until the lock is armed (or, for a tree in
  # CRIU's namespace, made).
  read -r answer <"$dir/reply"
  case $answer in
  "ready "*)
    printf '%s\n' "${answer#ready }" >"$dir/kind"
    exit 0
    ;;
  "error "*)
    printf 'error: %s\n' "${answer#error }" >&2
    exit 1
    ;;
  esac
  # No helper after all: the plain hook decides.
  exec "$here/cli.ts"
  ;;
pre-restore)
  if [ -n "$kind" ]; then
    # The dump planned this restore's unlock: no helper needed. A tree in
    # CRIU's namespace is watched from now on (no other action may come).
    [ "$kind" = host ] && watch opened "$planned"
    exit 0
  fi
  # Before a restore the clock runs already (and there is no PID yet): go on.
  start_helper
  exit 0
  ;;
network-lock)
  helper_dir
  ask "lock $CRTOOLS_INIT_PID" answer
  status=$?
  ;;
post-dump)
  helper_dir
  # A tree in CRIU's namespace: locked by connection now, to outlive it.
  ask "post-dump $CRTOOLS_INIT_PID" answer
  status=$?
  if [ $status -eq 2 ]; then
    kind=
    [ -n "$dir" ] && read -r kind 2>/dev/null <"$dir/kind"
    # Such a tree is the helper's alone to keep locked: never a dump without it.
    if [ "$kind" = host ]; then
      echo "error: criu-hook: the helper that keeps process $CRTOOLS_INIT_PID locked is gone; failing the dump (the tree runs on)" >&2
      exit 1
    fi
    exit 0
  fi
  exit $status
  ;;
network-unlock)
  helper_dir
  ask "unlock $CRTOOLS_INIT_PID" answer
  status=$?
  [ $status -eq 2 ] && unlock_from_plan && status=0
  [ $status -eq 0 ] && unlocked
  ;;
post-restore)
  # A tree in CRIU's namespace: its lock opens now, the last action before
  # CRIU's own unlock (post-resume removes it).
  [ "$kind" = host ] || exit 0
  if unlock_from_plan; then
    unlocked
    exit 0
  fi
  CRTOOLS_SCRIPT_ACTION=network-unlock plain_hook "$planned" && unlocked
  exit $?
  ;;
post-resume)
  # The planned unlock opened the lock or removed only what stops traffic:
  # the rest goes now, after the restore clock, with traffic flowing.
  left=
  read -r _ left 2>/dev/null <"$finish" || exit 0
  rm -f "$finish"
  CRTOOLS_SCRIPT_ACTION=network-unlock plain_hook "$left"
  exit $?
  ;;
setup-namespaces | post-setup-namespaces)
  helper_dir
  ask "arm $CRTOOLS_INIT_PID"
  # Watched from here on, the restored namespace held open.
  if [ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] && [ "$kind" != host ] &&
    exec 3</proc/"$CRTOOLS_INIT_PID"/ns/net 2>/dev/null; then
    watch undone --netns /proc/self/fd/3
    exec 3<&-
  fi
  exit 0
  ;;
*)
  exit 0
  ;;
esac
[ $status -eq 2 ] || exit $status
# No helper, or its plan did not fit: cli.ts does the work (and the restore's
# watcher is told when the unlock is done).
if [ -n "$planned" ]; then
  plain_hook "$planned"
else
  "$here/cli.ts"
fi
status=$?
[ $status -eq 0 ] && [ "$CRTOOLS_SCRIPT_ACTION" = network-unlock ] && unlocked
exit $status
