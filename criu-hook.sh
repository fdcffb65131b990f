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
# After a dump's lock the helper writes how to unlock it into CRIU's image
# directory (netlock-unlock: the backend; netlock-unlock.nft: the script). A
# restore from those images starts no helper: network-unlock runs the script
# in the restored namespace (one nft), and post-resume (after the restore
# clock, traffic flowing) removes what is left of an iptables lock.
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
  read -r helper 2>/dev/null <"$dir/pid" && kill -0 "$helper" 2>/dev/null || return 2
  # Read-write: opening never blocks; the keeper holds the pipe open.
  printf '%s\n' "$1" 1<>"$dir/cmd" 2>/dev/null || return 2
  [ "$2" = answer ] || return 0
  # The helper holds the other end: end-of-file means it is gone.
  read -r answer 2>/dev/null <"$dir/reply" || return 2
  case $answer in
  ok) return 0 ;;
  "error "*)
    printf 'error: %s\n' "${answer#error }" >&2
    return 1
    ;;
  esac
  return 2
}

# (Empty without CRIU's image directory: then no plan is ever found.)
plan=${CRTOOLS_IMAGE_DIR:+$CRTOOLS_IMAGE_DIR/netlock-unlock}
# Left by a planned unlock of iptables for post-resume (CRIU has closed its
# image directory by then).
finish=$base/criu-$PPID.finish

# Unlocks the restored namespace as the dump's helper planned it: 0 done,
# 2 not done (no plan, not a namespace of its own, nft failed: cli.ts then
# reads the state and unlocks whatever is left).
unlock_from_plan() {
  [ -n "$plan" ] && read -r backend rest 2>/dev/null <"$plan" || return 2
  case $CRTOOLS_INIT_PID in '' | *[!0-9]*) return 2 ;; esac
  # Never netlock's own namespace (the guard of every other path).
  [ /proc/"$CRTOOLS_INIT_PID"/ns/net -ef /proc/self/ns/net ] && return 2
  # A failure is cli.ts's to report (it reads what is really there).
  nsenter --target "$CRTOOLS_INIT_PID" --net -- nft -f - <"$plan.nft" 2>/dev/null || return 2
  # Traffic flows; post-resume removes what is left. (noclobber: never write
  # through a link someone left in a shared $TMPDIR; without the marker,
  # cli.ts removes it now.)
  [ "$rest" = finish ] || return 0
  (set -C && : >"$finish") 2>/dev/null || return 2
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
  elif [ -r "$plan" ]; then
    # The dump planned this restore's unlock: no helper needed.
    exit 0
  fi
  # A directory that exists is not ours: no helper, the plain hook will do.
  mkdir -m 0700 "$dir" 2>/dev/null && mkfifo -m 0600 "$dir/cmd" "$dir/reply" || exit 0
  # The helper's keeper holds both FIFOs open for as long as the helper
  # lives: a request written before the helper reads it is kept, and a hook
  # waiting for an answer gets end-of-file once the helper is gone.
  (
    exec 4<>"$dir/cmd" 5<>"$dir/reply"
    deno run --quiet --no-config --allow-run=nsenter \
      --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK \
      --allow-read="$dir" --allow-write="$dir${images:+,$images}" \
      "$here/cli.ts" criu-hook --serve "$dir" "$PPID" $ready ${images:+"--images=$images"} \
      </dev/null >/dev/null 4>&- 5>&-
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
  ask "unlock $CRTOOLS_INIT_PID" answer || { [ $? -eq 2 ] && unlock_from_plan; }
  ;;
post-resume)
  # The planned unlock removed the iptables jumps only: the rest goes now,
  # after the restore clock, with traffic flowing.
  [ -f "$finish" ] || exit 0
  rm -f "$finish"
  CRTOOLS_SCRIPT_ACTION=network-unlock exec "$here/cli.ts"
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
