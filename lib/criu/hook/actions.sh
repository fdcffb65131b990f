# shellcheck shell=sh disable=SC2154 # criu-hook.sh's variables
# Sourced by criu-hook.sh for the actions outside a dump's frozen window
# (pre-dump, the restore's), and for a lock or unlock no helper answered
# ($status 2). It uses criu-hook.sh's $here, $criu, $pointer, helper_dir,
# ask, create and unlocked.

# shellcheck source=lib/criu/hook/run.sh
. "$here/lib/criu/hook/run.sh"

# One CRIU run: its PID, start time and PID namespace; its entries are
# BASE/criu-PID-START-PIDNS*. (A PID and a start time repeat in other PID
# namespaces: two containers' CRIUs, both PID 200, started in the same
# clock tick.)
started_of "$criu"
start=$started
pid_namespace
run=$base/criu-$criu-$start${pidns:+-$pidns}
# A restore's markers: left by a planned unlock for post-resume (CRIU has
# closed its image directory by then, so they are found by CRIU's PID and
# start time; .finish holds the plan's tree and dumped PID), and by any
# unlock for the restore's watcher.
markers=$run
finish=$markers.finish watching=$markers.watch

# Run detached: a session of its own (setsid without a fork: a background
# job of this shell leads no process group).
detach=setsid
command -v setsid >/dev/null 2>&1 || detach=
detached=$here/lib/criu/hook/detached.sh

# The restore's plan, written by the dump's helper (version 1, key=value
# lines, read by key): kind, which holds the tree (netns: a tree in a
# namespace of its own; host: a tree in CRIU's namespace; the key's name is
# version 1's), pid (the dumped root, host), and finish=1
# when post-resume has work left (backend is for cli.ts).
# (Empty without CRIU's image directory: then no plan is ever found. Only
# the restore's actions read it: the dump's do not.)
plan=${CRTOOLS_IMAGE_DIR:+$CRTOOLS_IMAGE_DIR/netlock-unlock}
tree='' planned='' finish_left='' version=''
case $CRTOOLS_SCRIPT_ACTION in
pre-restore | setup-namespaces | network-unlock | post-restore)
  if [ -n "$plan" ] && [ -f "$plan" ]; then
    while IFS='=' read -r key value; do
      case $key in
      version) version=$value ;;
      kind) tree=$value ;; # (the key of version 1: which tree was dumped)
      pid) planned=$value ;;
      finish) finish_left=$value ;;
      esac
    done <"$plan"
  fi
  ;;
esac
case $version/$tree in 1/host | 1/netns) ;; *) tree='' ;; esac

# Unlocks as the dump's helper planned it: 0 done, 2 not done (no plan, not
# a namespace of its own, nft failed: cli.ts then reads the state and
# unlocks whatever is left).
unlock_from_plan() {
  case $tree in
  netns)
    case $CRTOOLS_INIT_PID in '' | *[!0-9]*) return 2 ;; esac
    # Never netlock's own namespace (the guard of every other path).
    # shellcheck disable=SC3013 # -ef: dash, bash and BusyBox's ash have it
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
  create "$finish" "$tree $planned" || return 2
}

# Starts the restore's watcher, detached: $1 when to unlock, the rest what
# to give cli.ts unlock once CRIU is gone (lib/criu/hook/detached.sh).
# Once per run.
watch() {
  create "$watching" || return 0
  $detach sh "$detached" watcher "$criu" "$start" "$markers" "$@" </dev/null >/dev/null 2>&1 &
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
  $detach sh "$detached" keeper "$dir" "$images" "$criu" "--criu-start=$start" "$@" </dev/null >/dev/null &
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
    printf '%s\n' "${answer#ready }" >"$dir/tree"
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
  if [ -n "$tree" ]; then
    # The dump planned this restore's unlock: no helper needed. A tree in
    # CRIU's namespace is watched from now on (no other action may come).
    [ "$tree" = host ] && watch opened "$planned"
    exit 0
  fi
  # Before a restore the clock runs already (and there is no PID yet): go on.
  start_helper
  exit 0
  ;;
network-unlock)
  # No helper answered: the plan's script, else cli.ts below.
  if unlock_from_plan; then
    unlocked
    exit 0
  fi
  ;;
post-restore)
  # A tree in CRIU's namespace: its lock opens now, the last action before
  # CRIU's own unlock (post-resume removes it).
  [ "$tree" = host ] || exit 0
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
  # A restore that fails narrows the namespace lock the dump left to what
  # the dump took (its images, by their real path: CRIU's /proc path goes
  # with CRIU), by the dumped PID the plan names.
  if [ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] && [ "$tree" != host ] &&
    exec 3</proc/"$CRTOOLS_INIT_PID"/ns/net 2>/dev/null; then
    images=
    # (cd and back, builtins only: $here may be relative.)
    if [ "$tree" = netns ] && [ -n "$planned" ] && cd -P "$CRTOOLS_IMAGE_DIR" 2>/dev/null; then
      images=$PWD
      cd "$OLDPWD" 2>/dev/null || :
    fi
    watch undone "$planned" "$images"
    exec 3<&-
  fi
  exit 0
  ;;
esac
# network-lock or network-unlock that no helper answered: cli.ts does the
# work (and the restore's watcher is told when the unlock is done).
if [ -n "$planned" ]; then
  plain_hook "$planned"
else
  "$here/cli.ts"
fi
status=$?
[ $status -eq 0 ] && [ "$CRTOOLS_SCRIPT_ACTION" = network-unlock ] && unlocked
exit $status
