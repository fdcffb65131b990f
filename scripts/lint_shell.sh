#!/bin/sh
# The shell programs' lint (deno task check): every one parses (sh -n), and
# shellcheck finds no warning. Without shellcheck (Debian: apt-get install
# shellcheck) only the parse is checked, and said; under CI it is required.
cd "$(dirname "$0")/.." || exit 1
# criu-hook.sh and its own shell, and the programs the library runs by sh -c
# (lib/**/*.sh, embedded by scripts/embed_shell.ts).
posix="criu-hook.sh criu-netlock $(find lib -name '*.sh' | sort)"
bash_scripts="scripts/demo.sh scripts/zdtm.sh .ci/run"
for file in $posix; do sh -n "$file" || exit 1; done
for file in $bash_scripts; do bash -n "$file" || exit 1; done
if ! command -v shellcheck >/dev/null 2>&1; then
  [ "$CI" = true ] && {
    echo "error: shellcheck is not installed" >&2
    exit 1
  }
  echo "shellcheck not installed: shell programs parse-checked only" >&2
  exit 0
fi
# shellcheck disable=SC2086 # lists of paths without spaces
shellcheck -S warning -x -s sh $posix && shellcheck -S warning -x $bash_scripts
