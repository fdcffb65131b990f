#!/bin/sh
# netlock as CRIU's action script:
#   criu dump --network-lock skip --action-script /path/to/criu-hook.sh ...
#   criu restore --network-lock skip --action-script /path/to/criu-hook.sh ...
#
# CRIU runs this for every action and waits for it. This file is the shell
# of a dump's frozen window: network-lock, post-dump and network-unlock
# parse only this file, send one request line to netlock's warm helper
# (cli.ts criu-hook --serve, started at pre-dump) and read one answer line,
# with shell builtins only. Every other action, and a network action no
# helper answered, is lib/criu/hook/actions.sh's. docs/criu.md, "The
# actions", has one row per action naming the function that does its work,
# and "State" every file made and who removes it.
# Options come from NETLOCK_BACKEND, NETLOCK_NAME, NETLOCK_MARK, as for cli.ts.

case $CRTOOLS_SCRIPT_ACTION in
pre-dump | network-lock | post-dump | network-unlock) ;;
pre-restore | setup-namespaces | post-setup-namespaces | post-restore | post-resume) ;;
*) exit 0 ;;
esac

here=${0%/*}
[ "$here" = "$0" ] && here=.

# CRIU's PID: the one in CRTOOLS_IMAGE_DIR (/proc/CRIU/fd/N), which holds
# when a wrapper runs this script; else this script's parent.
criu=${CRTOOLS_IMAGE_DIR#/proc/}
criu=${criu%%/*}
case $CRTOOLS_IMAGE_DIR in /proc/[0-9]*/fd/*) ;; *) criu=$PPID ;; esac
case $criu in '' | *[!0-9]*) criu=$PPID ;; esac
# The image directory points to this run's helper, a directory made with
# mktemp at pre-dump or pre-restore: BASE/criu-CRIUPID-START.XXXXXX (CRIU's
# PID and start time: a PID alone repeats across PID namespaces and over
# time). The pointer is unique to the run, whatever its PID.
pointer=${CRTOOLS_IMAGE_DIR:+$CRTOOLS_IMAGE_DIR/netlock-helper}
markers=''

# This run's helper directory, from the pointer, into $dir (empty: none),
# and (when there is one) the run's marker prefix, BASE/criu-CRIUPID-START,
# into $markers.
# (Not CRIU's start time from its stat: a shell reads it a byte at a time,
# which costs a quarter of a millisecond inside the frozen window.)
helper_dir() {
  dir=''
  [ -n "$pointer" ] && read -r dir 2>/dev/null <"$pointer"
  # Only this CRIU's (a pointer left by an earlier run names another).
  case $dir in
  */criu-"$criu"-[0-9]*.*) markers=${dir%.*} ;;
  *) dir='' ;;
  esac
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

# Creates file $1 holding $2, never through one that exists (noclobber:
# never write through a link someone left in a shared $TMPDIR, and a run of
# another PID namespace with the same CRIU PID and start time keeps its
# own). No subshell: every fork counts inside CRIU's clock.
create() {
  set -C
  printf '%s\n' "$2" 2>/dev/null >"$1"
  set -- $?
  set +C
  return "$1"
}

# Marks the unlock done, for the restore's watcher (if one watches: the
# run's .watch marker, made by lib/criu/hook/detached.sh's watcher).
unlocked() {
  [ -n "$markers" ] && [ -e "$markers.watch" ] && create "$markers.done"
  return 0
}

# Inside the frozen window: the helper answers.
case $CRTOOLS_SCRIPT_ACTION in
network-lock)
  helper_dir
  ask "lock $CRTOOLS_INIT_PID" answer
  status=$?
  [ $status -eq 2 ] || exit $status
  ;;
post-dump)
  helper_dir
  # A tree in CRIU's namespace: locked by connection now, to outlive it.
  ask "post-dump $CRTOOLS_INIT_PID" answer
  status=$?
  [ $status -eq 2 ] || exit $status
  place=
  [ -n "$dir" ] && read -r place 2>/dev/null <"$dir/place"
  # Such a tree is the helper's alone to keep locked: never a dump without it.
  if [ "$place" = host ]; then
    echo "error: criu-hook: the helper that keeps process $CRTOOLS_INIT_PID locked is gone; failing the dump (the tree runs on)" >&2
    exit 1
  fi
  exit 0
  ;;
network-unlock)
  helper_dir
  ask "unlock $CRTOOLS_INIT_PID" answer
  status=$?
  [ $status -eq 0 ] && unlocked
  [ $status -eq 2 ] || exit $status
  ;;
esac
# Every other action, and a lock or unlock no helper answered.
# shellcheck source=lib/criu/hook/actions.sh
. "$here/lib/criu/hook/actions.sh"
