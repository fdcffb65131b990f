#!/bin/sh
# netlock as CRIU's action script:
#   criu dump --network-lock skip --action-script /path/to/criu-hook.sh ...
#   criu restore --network-lock skip --action-script /path/to/criu-hook.sh ...
#
# CRIU runs this for every action and waits for it, several times inside the
# application's frozen window, so it costs no Deno start there:
# - pre-dump / pre-restore (before anything is frozen): start netlock's warm
#   helper (cli.ts criu-hook --serve), which arms the lock ahead;
# - network-lock / network-unlock: one request line to the helper and one
#   answer line back, with shell builtins only; without a helper, cli.ts does
#   the work itself (the plain hook);
# - post-setup-namespaces (restore): tell the helper the restored PID, so it
#   arms the unlock;
# - every other action: nothing.
# Options come from NETLOCK_BACKEND, NETLOCK_NAME, NETLOCK_MARK, as for cli.ts.

here=${0%/*}
[ "$here" = "$0" ] && here=.
# One private directory per CRIU process (this script's parent).
base=/run/netlock
[ -d "$base" ] || mkdir -m 0700 "$base" 2>/dev/null || base=${TMPDIR:-/tmp}
dir=$base/criu-$PPID

# Sends one request; 0 ok, 1 failed (message on stderr), 2 no helper answered.
ask() {
  [ -p "$dir/cmd" ] || return 2
  read -r helper <"$dir/pid" 2>/dev/null && kill -0 "$helper" 2>/dev/null || return 2
  # Read-write: opening never blocks; the keeper holds the pipe open.
  printf '%s\n' "$1" 1<>"$dir/cmd" 2>/dev/null || return 2
  [ "$2" = answer ] || return 0
  # The helper holds the other end: end-of-file means it is gone.
  read -r answer <"$dir/reply" 2>/dev/null || return 2
  case $answer in
  ok) return 0 ;;
  "error "*)
    printf 'error: %s\n' "${answer#error }" >&2
    return 1
    ;;
  esac
  return 2
}

case $CRTOOLS_SCRIPT_ACTION in
pre-dump | pre-restore)
  ready=
  [ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] && [ -n "$CRTOOLS_INIT_PID" ] && ready=--ready
  # A directory that exists is not ours: no helper, the plain hook will do.
  mkdir -m 0700 "$dir" 2>/dev/null && mkfifo -m 0600 "$dir/cmd" "$dir/reply" || exit 0
  # The helper's keeper holds both FIFOs open for as long as the helper
  # lives: a request written before the helper reads it is kept, and a hook
  # waiting for an answer gets end-of-file once the helper is gone.
  (
    exec 4<>"$dir/cmd" 5<>"$dir/reply"
    deno run --quiet --no-config --allow-run=nsenter \
      --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK \
      --allow-read="$dir" --allow-write="$dir" \
      "$here/cli.ts" criu-hook --serve "$dir" "$PPID" $ready </dev/null >/dev/null 4>&- 5>&-
    rm -rf "$dir"
  ) </dev/null >/dev/null &
  echo $! >"$dir/pid"
  # Before a dump nothing is frozen yet: wait until the lock is armed. Before
  # a restore the clock runs already (and there is no PID yet): go on.
  [ -n "$ready" ] && read -r answer <"$dir/reply"
  exit 0
  ;;
network-lock)
  ask "lock $CRTOOLS_INIT_PID" answer
  ;;
network-unlock)
  ask "unlock $CRTOOLS_INIT_PID" answer
  ;;
setup-namespaces | post-setup-namespaces)
  ask "arm $CRTOOLS_INIT_PID"
  exit 0
  ;;
*)
  exit 0
  ;;
esac
status=$?
[ $status -eq 2 ] || exit $status
exec "$here/cli.ts"
