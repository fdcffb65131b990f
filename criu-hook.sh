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
#   locks it now: by its cgroup when the tree has one of its own, else by its
#   connections. The helper watches CRIU: when CRIU is gone and the tree runs
#   again (--leave-running, a failed dump, a CRIU that died), it unlocks.
# - network-lock / network-unlock / post-dump: one request line to the
#   helper and one answer line back, with shell builtins only; without a
#   helper, cli.ts does the work itself (the plain hook). At post-dump a tree
#   in CRIU's namespace is locked by connection, to outlive it.
# - setup-namespaces / post-setup-namespaces (restore): tell the helper the
#   restored PID, so it arms the unlock; and watch CRIU: a restore that fails
#   before the unlock leaves no lock in a namespace that outlives it.
# - every other action: nothing.
# After a dump's lock the helper writes how to unlock it into CRIU's image
# directory (netlock-unlock: what and which backend; netlock-unlock.nft: the
# script). A restore from those images starts no helper: network-unlock (a
# tree in its own namespace) or post-restore (a tree in CRIU's namespace)
# runs the script (one nft: it opens the lock), and post-resume (after the
# restore clock, traffic flowing) removes what is left of it.
# Options come from NETLOCK_BACKEND, NETLOCK_NAME, NETLOCK_MARK, as for cli.ts.

here=${0%/*}
[ "$here" = "$0" ] && here=.
# CRIU's PID: the one in CRTOOLS_IMAGE_DIR (/proc/CRIU/fd/N), which holds
# when a wrapper runs this script; else this script's parent.
criu=${CRTOOLS_IMAGE_DIR#/proc/}
criu=${criu%%/*}
case $CRTOOLS_IMAGE_DIR in /proc/[0-9]*/fd/*) ;; *) criu=$PPID ;; esac
case $criu in '' | *[!0-9]*) criu=$PPID ;; esac
# One private directory per CRIU process.
base=/run/netlock
[ -d "$base" ] || mkdir -m 0700 "$base" 2>/dev/null || base=${TMPDIR:-/tmp}
dir=$base/criu-$criu

# Sends one request; 0 ok, 1 failed (message on stderr), 2 no helper answered.
ask() {
  [ -p "$dir/cmd" ] || return 2
  read -r helper 2>/dev/null <"$dir/pid" && kill -0 "$helper" 2>/dev/null || return 2
  # Read-write: opening never blocks; the keeper holds the pipe open.
  printf '%s\n' "$1" 1<>"$dir/cmd" 2>/dev/null || return 2
  [ "$2" = answer ] || return 0
  # The helper holds the other end: end-of-file means it is gone.
  read -r answer 2>/dev/null <"$dir/reply" || return 2
  case $answer in
  ok | ready) return 0 ;;
  "error "*)
    printf 'error: %s\n' "${answer#error }" >&2
    return 1
    ;;
  esac
  return 2
}

# (Empty without CRIU's image directory: then no plan is ever found.)
plan=${CRTOOLS_IMAGE_DIR:+$CRTOOLS_IMAGE_DIR/netlock-unlock}
# The plan's first line: the lock's kind (host: a tree in CRIU's namespace),
# backend, the dumped PID, and "finish" when post-resume has work left.
kind= backend= planned= rest=
[ -n "$plan" ] && read -r kind backend planned rest 2>/dev/null <"$plan"
case $kind in
host) ;;
iptables | nftables) rest=$backend backend=$kind kind=netns planned= ;;
*) kind= ;;
esac
# Left by a planned unlock of iptables for post-resume (CRIU has closed its
# image directory by then), and by any unlock for the restore's watcher.
finish=$base/criu-$criu.finish
done=$base/criu-$criu.done watching=$base/criu-$criu.watch

# Creates a marker file, never through one that exists (noclobber: never
# write through a link someone left in a shared $TMPDIR). No subshell: every
# fork counts inside CRIU's clock. (`true`, not `:`: a failed redirection
# of a special builtin would end the script.)
create() {
  set -C
  true 2>/dev/null >"$1"
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
  [ "$rest" = finish ] || return 0
  create "$finish" || return 2
}

# Marks the unlock done, for the restore's watcher (if one watches).
unlocked() {
  [ -e "$watching" ] && create "$done"
  return 0
}

# After CRIU is gone: unless the unlock was done and nothing was left for
# post-resume, remove the lock (the restore failed, or CRIU died before
# post-resume; what it locked must not outlive it).
# $1: what to give cli.ts unlock. Outside the restore clock, so cli.ts may
# start; the namespace is held open as fd 3 for as long as it takes.
watch() {
  create "$watching" || return 0
  (
    tail --pid="$criu" -s 0.05 -f /dev/null 2>/dev/null
    if [ ! -e "$done" ] || [ -e "$finish" ]; then
      CRTOOLS_SCRIPT_ACTION= "$here/cli.ts" unlock -q --name "${NETLOCK_NAME:-NETLOCK}" "$@"
    fi
    rm -f "$done" "$finish" "$watching"
  ) </dev/null >/dev/null 2>&1 &
}

case $CRTOOLS_SCRIPT_ACTION in
pre-dump | pre-restore)
  ready= images=
  if [ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ]; then
    [ -n "$CRTOOLS_INIT_PID" ] && ready=--ready
    # Where the helper writes the restore's unlock (Deno cannot use the
    # /proc path CRIU gives; a comma would split Deno's permission list).
    # (Without it, none: `cd ""` would stay here, and the plan land in the cwd.)
    [ -n "$CRTOOLS_IMAGE_DIR" ] && images=$(cd -P "$CRTOOLS_IMAGE_DIR" 2>/dev/null && pwd)
    case $images in *,*) images= ;; esac
  elif [ -n "$kind" ]; then
    # The dump planned this restore's unlock: no helper needed. A tree in
    # CRIU's namespace is watched from now on (no other action may come).
    [ "$kind" = host ] && watch "$planned"
    exit 0
  fi
  # A directory that exists is not ours: no helper, the plain hook will do.
  if ! { mkdir -m 0700 "$dir" 2>/dev/null && mkfifo -m 0600 "$dir/cmd" "$dir/reply"; }; then
    [ -n "$ready" ] && exec "$here/cli.ts"
    exit 0
  fi
  # The helper's keeper holds both FIFOs open for as long as the helper
  # lives: a request written before the helper reads it is kept, and a hook
  # waiting for an answer gets end-of-file once the helper is gone.
  (
    exec 4<>"$dir/cmd" 5<>"$dir/reply"
    deno run --quiet --no-config --allow-run=nsenter \
      --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK \
      --allow-read="$dir" --allow-write="$dir${images:+,$images}" \
      "$here/cli.ts" criu-hook --serve "$dir" "$criu" $ready ${images:+"--images=$images"} \
      </dev/null >/dev/null 4>&- 5>&-
    rm -rf "$dir"
  ) </dev/null >/dev/null &
  echo $! >"$dir/pid"
  # Before a dump nothing is frozen yet: wait until the lock is armed (or, for
  # a tree in CRIU's namespace, made). Before a restore the clock runs
  # already (and there is no PID yet): go on.
  [ -n "$ready" ] || exit 0
  read -r answer <"$dir/reply"
  case $answer in
  ready) exit 0 ;;
  "error "*)
    printf 'error: %s\n' "${answer#error }" >&2
    exit 1
    ;;
  esac
  # No helper after all: the plain hook decides.
  exec "$here/cli.ts"
  ;;
network-lock)
  ask "lock $CRTOOLS_INIT_PID" answer
  status=$?
  ;;
post-dump)
  # A tree in CRIU's namespace: locked by connection now. (No helper: the
  # plain hook refused such a tree at pre-dump.)
  ask "post-dump $CRTOOLS_INIT_PID" answer
  status=$?
  [ $status -eq 2 ] && exit 0
  exit $status
  ;;
network-unlock)
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
  CRTOOLS_SCRIPT_ACTION=network-unlock CRTOOLS_INIT_PID=$planned "$here/cli.ts" && unlocked
  exit $?
  ;;
post-resume)
  # The planned unlock opened the lock or removed only what stops traffic:
  # the rest goes now, after the restore clock, with traffic flowing.
  [ -f "$finish" ] || exit 0
  rm -f "$finish"
  [ "$kind" = host ] && CRTOOLS_INIT_PID=$planned
  CRTOOLS_SCRIPT_ACTION=network-unlock exec "$here/cli.ts"
  ;;
setup-namespaces | post-setup-namespaces)
  ask "arm $CRTOOLS_INIT_PID"
  # Watched from here on, the restored namespace held open.
  if [ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] && [ "$kind" != host ] &&
    exec 3</proc/"$CRTOOLS_INIT_PID"/ns/net 2>/dev/null; then
    watch --netns /proc/self/fd/3
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
"$here/cli.ts"
status=$?
[ $status -eq 0 ] && [ "$CRTOOLS_SCRIPT_ACTION" = network-unlock ] && unlocked
exit $status
