# shellcheck shell=sh disable=SC2154 # $here: the sourcing script's
# Sourced by lib/criu/hook/actions.sh and lib/criu/hook/detached.sh (with
# $here set to netlock's root): where a CRIU run's state lives, whether a
# process is still the one that started, and the plain hook.

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

# This shell's PID namespace, as its inode number, into $pidns (empty
# where the kernel does not show it): from the fdinfo of the namespace
# opened as fd 3, with builtins only (no fork inside CRIU's clock).
pid_namespace() {
  pidns=
  while read -r key value; do
    [ "$key" = ino: ] && pidns=$value
  done 3</proc/self/ns/pid </proc/self/fdinfo/3 2>/dev/null
  case $pidns in *[!0-9]*) pidns= ;; esac
}

# Whether process $1 is still the one that started at $2.
alive_as() {
  started_of "$1" && [ "$started" = "$2" ]
}

# cli.ts as the plain hook, told the PID the tree was dumped with ($1): a
# tree restored in a PID namespace of its own (a container) has a new PID
# outside it, and the locks kept since the dump bear the old one.
plain_hook() {
  NETLOCK_DUMPED_PID=$1 deno run --quiet --no-config --allow-run=nsenter \
    --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK,NETLOCK_DUMPED_PID \
    "$here/cli.ts"
}

# cli.ts narrowing the namespace lock in $3 (a path holding it) to what the
# dump in $2 took, by the dumped PID $1 (after a restore that failed).
# (Images under /dev take --allow-all: Deno asks for it for any path there,
# and refuses it beside another --allow-.)
narrow_hook() {
  set -- "$here/cli.ts" criu-hook --narrow "$@"
  case $5 in
  /dev/*) set -- --allow-all "$@" ;;
  *)
    set -- --allow-run=nsenter --allow-read="$5" \
      --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK \
      "$@"
    ;;
  esac
  deno run --quiet --no-config "$@"
}

# One private base directory for every run's state.
base=/run/netlock
[ -d "$base" ] || mkdir -m 0700 "$base" 2>/dev/null || base=${TMPDIR:-/tmp}
