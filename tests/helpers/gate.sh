#!/bin/sh
# gate.sh GATE COMMAND...: notes this process's start time (field 22 of its
# stat, clock ticks) in GATE.start, waits for a line on the FIFO GATE, and
# execs COMMAND on "go" (same PID, same start time), or exits 1 on anything
# else: a test starts processes in the same clock tick this way, retrying
# until their start times are equal.
gate=$1
shift
read -r stat </proc/self/stat
# shellcheck disable=SC2086 # split into fields on purpose
started_of_self() { set -- ${1##*") "}; shift 19; echo "$1"; }
started_of_self "$stat" >"$gate.start"
read -r word <"$gate"
[ "$word" = go ] || exit 1
exec "$@"
