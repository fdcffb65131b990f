# shellcheck shell=sh disable=SC2154 # criu-hook.sh's variables
# criu-hook.sh's shell outside a dump's frozen window: sourced by
# criu-hook.sh for the actions before and after the window and the
# restore's, and for a network action no helper answered (it uses
# criu-hook.sh's $here, $criu, $pointer, helper_dir, ask, create and
# unlocked); the processes it starts detached are lib/criu/hook/detached.sh
# (which sources the part of this file above its roles' line). Each
# action's row in docs/criu.md ("The actions") names its function here;
# every file they make or remove: docs/criu.md, "State".

# The start time of process $1 (field 22 of its stat), into $started; 1
# when it does not exist.
started_of() {
  started=
  stat=
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  # The name in parentheses may hold spaces: fields count from its end.
  # shellcheck disable=SC2086 # split into fields on purpose
  set -- ${stat##*") "}
  shift 19
  started=$1
}

# This shell's namespace of kind $1 (pid, net), as its inode number, into
# $ino (empty where the kernel does not show it): from the fdinfo of the
# namespace opened as fd 3, with builtins only (no fork inside CRIU's clock).
ns_inode() {
  ino=
  while read -r key value; do
    [ "$key" = ino: ] && ino=$value
  done 3<"/proc/self/ns/$1" </proc/self/fdinfo/3 2>/dev/null
  case $ino in *[!0-9]*) ino= ;; esac
}

# This shell's PID namespace, into $pidns.
pid_namespace() {
  ns_inode pid
  pidns=$ino
}

# This host and network namespace, into $origin ("BOOT_ID NETNS_INODE";
# empty where the kernel does not show them), with builtins only: a plan
# made under another origin came with images from elsewhere (a migration).
origin_here() {
  origin=
  boot=
  read -r boot 2>/dev/null </proc/sys/kernel/random/boot_id
  ns_inode net
  [ -n "$boot" ] && [ -n "$ino" ] && origin="$boot $ino"
}

# cli.ts's permissions, into $perms: its shebang's, the one list (the
# internal entry points, `cli.ts criu-hook --WORD`, need no other).
cli_permissions() {
  perms=
  read -r perms 2>/dev/null <"$here/cli.ts"
  perms=${perms#*deno run }
}

# Runs `cli.ts criu-hook $@` (an internal entry point) with cli.ts's permissions.
criu_hook() {
  cli_permissions
  # shellcheck disable=SC2086 # the shebang's flags, one word each
  deno run --quiet --no-config $perms "$here/cli.ts" criu-hook "$@"
}

# CRIU's image directory by its real path, into $images (empty when it
# cannot be entered): CRIU's /proc path goes with CRIU, and Deno cannot use
# it. (cd and back, builtins only: $here may be relative.)
images_path() {
  images=
  cd -P "$CRTOOLS_IMAGE_DIR" 2>/dev/null || return 1
  images=$PWD
  cd "$OLDPWD" 2>/dev/null || :
}

# Where every run's state lives: one private directory, made by the
# actions that write state (the others only look).
base=/run/netlock
case $CRTOOLS_SCRIPT_ACTION in
pre-dump | pre-restore | setup-namespaces | network-unlock | post-restore)
  [ -d "$base" ] || mkdir -m 0700 "$base" 2>/dev/null
  ;;
esac
[ -d "$base" ] || base=${TMPDIR:-/tmp}

# The rest is criu-hook.sh's: lib/criu/hook/detached.sh sources only the above.
case $0 in */lib/criu/hook/detached.sh) return 0 ;; esac

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
# start time; .finish holds the tree's place and the dumped PID), and by
# any unlock for the restore's watcher.
markers=$run
finish=$markers.finish watching=$markers.watch

# Run detached: a session of its own (setsid without a fork: a background
# job of this shell leads no process group).
detach=setsid
command -v setsid >/dev/null 2>&1 || detach=
roles=$here/lib/criu/hook/detached.sh

# The restore's plan, written by the dump's helper (lib/criu/plan.ts;
# version 1, key=value lines, read by key): kind (the tree's place: host
# or netns), pid (the dumped root), finish=1 when post-resume has work
# left, hold (the directory of the dump's helper, which holds what the
# lock stopped for this restore) (backend is for cli.ts). Only the
# restore's actions read it.
plan=${CRTOOLS_IMAGE_DIR:+$CRTOOLS_IMAGE_DIR/netlock-unlock}
place='' dumped='' finish_left='' version='' holder=''
case $CRTOOLS_SCRIPT_ACTION in
pre-restore | setup-namespaces | network-unlock | post-restore)
  if [ -n "$plan" ] && [ -f "$plan" ]; then
    while IFS='=' read -r key value; do
      case $key in
      version) version=$value ;;
      kind) place=$value ;;
      pid) dumped=$value ;;
      finish) finish_left=$value ;;
      hold) holder=$value ;;
      esac
    done <"$plan"
  fi
  ;;
esac
case $version/$place in 1/host | 1/netns) ;; *) place='' ;; esac

# Unlocks as the dump's helper planned it: 0 done, 2 not done (no plan, not
# a namespace of its own, nft failed: cli.ts then reads the state and
# unlocks whatever is left).
unlock_from_plan() {
  case $place in
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
  # Traffic flows; post-resume removes what is left, after it let through
  # what the dump's helper held, if any. (Without the marker, cli.ts
  # removes it now.)
  [ "$finish_left" = 1 ] || return 0
  create "$finish" "$place $dumped${holder:+ $holder}" || return 2
}

# The lock is open and the tree runs: what the dump's helper ($1) still
# holds for this restore of PID $2 (NETLOCK_HOLD=1: a tree in CRIU's
# namespace, or in a namespace that outlived it) goes on now, at once; the
# answer comes after its first batch. Nothing to do without such a helper
# (none held, or its time ran out: the lock dropped), nor for a directory
# not of this host's state.
release_held() {
  case $1 in "$base"/criu-[0-9]*.*) ;; *) return 0 ;; esac
  dir=$1
  ask "release $2" answer
  return 0
}

# cli.ts unlocks the restored tree and what the dump kept under its dumped
# PID ($1; empty: the plain hook, CRIU's environment alone).
unlock_restored() {
  if [ -n "$1" ]; then
    criu_hook --unlock-restored "$CRTOOLS_INIT_PID" "$1"
  else
    "$here/cli.ts"
  fi
}

# Starts the restore's watcher, detached: $1 the tree's place, $2 the
# dumped PID, $3 the images (a namespace's). Once per run.
watch() {
  create "$watching" || return 0
  $detach sh "$roles" watcher "$criu" "$start" "$markers" "$@" </dev/null >/dev/null 2>&1 &
}

# Starts the warm helper ($@: dump PID, or restore) in a directory of its
# own, which the image directory points to; 1 when it cannot (no image
# directory, no start time, mktemp, mkfifo or the pointer failed).
start_helper() {
  [ -n "$pointer" ] && [ -n "$start" ] || return 1
  dir=$(mktemp -d "$run.XXXXXX" 2>/dev/null) || return 1
  if ! mkfifo -m 0600 "$dir/cmd" "$dir/reply" || ! printf '%s\n' "$dir" 2>/dev/null >"$pointer"; then
    rm -rf "$dir"
    return 1
  fi
  images=
  [ "$1" = dump ] && images_path
  # The helper writes the restore's plan through a link in its directory
  # (Deno cannot use CRIU's /proc path; a comma would split its permission list).
  [ -n "$images" ] && ln -s "$images" "$dir/images" && set -- "$@" "$dir/images"
  $detach sh "$roles" keeper "$dir" "$images" "$criu" "$start" "$@" </dev/null >/dev/null &
  echo $! >"$dir/pid"
}

# pre-dump: the helper, started and waited for (nothing is frozen yet) until
# the lock is armed or, for a tree in CRIU's namespace, made.
pre_dump() {
  # NETLOCK_HOLD is the helper's alone: checked here, before it starts.
  case ${NETLOCK_HOLD-} in
  '' | 0 | 1) ;;
  *)
    echo "error: NETLOCK_HOLD=$NETLOCK_HOLD: 1 holds what the lock stops, 0 (or unset) drops it" >&2
    exit 2
    ;;
  esac
  # Where the dump runs, for a restore to tell a migration (pre_restore).
  origin_here
  [ -n "$origin" ] && [ -n "${CRTOOLS_IMAGE_DIR-}" ] &&
    printf '%s\n' "$origin" 2>/dev/null >"$CRTOOLS_IMAGE_DIR/netlock-origin"
  # No helper: the plain hook decides (it refuses a tree in CRIU's namespace).
  start_helper dump "$CRTOOLS_INIT_PID" || exec "$here/cli.ts"
  read -r answer <"$dir/reply"
  case $answer in
  "ready "*)
    printf '%s\n' "${answer#ready }" >"$dir/place"
    exit 0
    ;;
  "error "*)
    printf 'error: %s\n' "${answer#error }" >&2
    exit 1
    ;;
  esac
  # No helper after all: the plain hook decides.
  exec "$here/cli.ts"
}

# Whether the images were dumped under another origin (another host, or
# another namespace): their plan's origin is not this one.
migrated() {
  made=
  read -r made 2>/dev/null <"$CRTOOLS_IMAGE_DIR/netlock-origin" || return 1
  origin_here
  [ -n "$origin" ] && [ "$made" != "$origin" ]
}

# A tree on the host's network restored where it was not dumped: what the
# dump took is locked here now, unless `netlock lock --images` did it
# before the service's address arrived (cli.ts says in CRIU's log which;
# it never fails the restore).
lock_migrated() {
  images_path && criu_hook --lock-migrated "$images" "$dumped"
  return 0
}

# pre-restore: a planned restore needs no helper (a tree in CRIU's
# namespace is watched from now on: no other action may come); else the
# helper, not waited for (the restore clock runs already).
pre_restore() {
  if [ -n "$place" ]; then
    [ "$place" = host ] && migrated && lock_migrated
    [ "$place" = host ] && watch host "$dumped"
    exit 0
  fi
  start_helper restore
  exit 0
}

# setup-namespaces, post-setup-namespaces: the helper arms the unlock of
# the restored namespace; the restore is watched from here on, the
# namespace held open, so that a restore that fails narrows the namespace
# lock to what the dump took (its images by their real path: CRIU's /proc
# path goes with CRIU).
setup_namespaces() {
  helper_dir
  ask "arm $CRTOOLS_INIT_PID"
  if [ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] && [ "$place" != host ] &&
    exec 3</proc/"$CRTOOLS_INIT_PID"/ns/net 2>/dev/null; then
    images=
    [ "$place" = netns ] && [ -n "$dumped" ] && images_path
    watch netns "$dumped" "$images"
    exec 3<&-
  fi
  exit 0
}

# post-restore: a tree in CRIU's namespace has its lock opened, the last
# action before CRIU's own unlock (post-resume removes it).
post_restore() {
  [ "$place" = host ] || exit 0
  if unlock_from_plan; then
    unlocked
    exit 0
  fi
  # (The lock is gone: what was held goes on now.)
  unlock_restored "$dumped" && release_held "$holder" "$dumped" && unlocked
  exit $?
}

# post-resume: what a dump's helper held goes on (the tree runs, its
# sockets out of repair mode), then what a planned unlock left (it opened
# the lock or removed only what stops traffic) goes, after the restore clock.
post_resume() {
  left='' held=''
  read -r _ left held 2>/dev/null <"$finish" || exit 0
  rm -f "$finish"
  release_held "$held" "$left"
  unlock_restored "$left"
  exit $?
}

case $CRTOOLS_SCRIPT_ACTION in
pre-dump) pre_dump ;;
pre-restore) pre_restore ;;
setup-namespaces | post-setup-namespaces) setup_namespaces ;;
post-restore) post_restore ;;
post-resume) post_resume ;;
network-unlock)
  # No helper answered: the plan's script, else cli.ts below.
  if unlock_from_plan; then
    unlocked
    exit 0
  fi
  ;;
esac
# network-lock, post-dump or network-unlock that no helper answered:
# cli.ts does the work (and the restore's watcher is told when the unlock
# is done).
unlock_restored "$dumped"
status=$?
[ $status -eq 0 ] && [ "$CRTOOLS_SCRIPT_ACTION" = network-unlock ] && unlocked
exit $status
