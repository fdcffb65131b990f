/**
 * The CLI's help text.
 *
 * @module
 */

/**
 * The text of `netlock --help`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { helpText } from "./help.ts";
 * assert(helpText("1.0.0").startsWith("netlock 1.0.0"));
 * ```
 *
 * @param version netlock's version.
 * @returns The help, ending with a newline.
 */
export function helpText(version: string): string {
  return `netlock ${version} — freeze and thaw the network of a process (CRIU's network lock)

Usage:
  netlock lock    [options] TARGET...    drop all unmarked traffic of each target
  netlock unlock  [options] TARGET...    remove the lock (succeeds if not locked);
                                         --all: every lock of the namespace (no
                                         target: netlock's own, as list)
  netlock lock    --images DIR [TARGET]  live migration: lock what the CRIU dump
  netlock unlock  --images DIR [TARGET]  in DIR took (its connections, listeners),
                                         before the address arrives / clear it on
                                         the source (no target: netlock's own
                                         namespace, a tree on the host's network)
  netlock status  [options] TARGET...    exit 0 if every target is locked, 3 if not
  netlock list    [options] [TARGET...]  every lock in each target's namespace (no
                                         target: netlock's own), exit 0 if none
  netlock run     [options] TARGET -- COMMAND [ARG...]
                                         lock, run COMMAND, always unlock; exit
                                         with COMMAND's status (125: netlock failed)
  netlock rules   [lock|unlock] [options]  print the ruleset (--backend nftables:
                                         the nft script); needs no root, no target;
                                         --mode connections: a PID's connection
                                         lock NAME-cPID, which unlock PID also removes
  netlock criu-hook                      act as CRIU's action script (also when run
                                         with no arguments and CRTOOLS_SCRIPT_ACTION set)

TARGET is a PID (its network namespace). --netns PATH adds a namespace file
target (a bare NAME means /run/netns/NAME); repeatable. In auto mode, status
and unlock of a PID in another namespace see both its namespace lock and its
connection lock. status and unlock take a lock by its name, whatever its mark
and IPv6 choice. A chain or table of the lock's name that netlock did not make
is never touched. A flag a command does not take is refused.

Options:
  -b, --backend NAME         iptables (default), nftables, or auto (nftables,
                             falling back to iptables); unlock and status
                             look at both whatever the backend
      --mode MODE            netns: drop all traffic of the target's namespace;
                             connections: drop only the target process's TCP
                             connections (CRIU's rule for processes in the
                             host's namespace); auto (default): connections
                             when the target shares netlock's own namespace,
                             else netns
      --mark N               lock, run: packets with this mark pass
                             (1..0xFFFFFFFF, default 0xC114; never 0, the
                             mark of every unmarked packet)
      --name NAME            lock chain name (default NETLOCK; CRIU uses CRIU);
                             not a built-in chain such as INPUT
      --ipv6 auto|on|off     lock, run, iptables backend: lock IPv6 too
                             (default auto: if the kernel has it)
      --userns               also enter the target's user namespace: lock a
                             rootless container you own without root
      --force                lock, run: allow --mode netns on netlock's own
                             namespace
      --criu                 status/unlock/list: also see and remove locks
                             CRIU itself left (chain CRIU, tables inet CRIU-*)
      --all                  unlock: every lock list shows (namespace,
                             connection and cgroup locks), one transaction;
                             no --mode; no target: netlock's own namespace
      --action-script PATH   run PATH (CRIU's contract) before the rules are
                             applied (network-lock) and removed (network-unlock);
                             repeatable; needs --allow-run=PATH
      --timeout SECONDS      limit for each spawned tool (default 10)
      --dry-run              lock, unlock, run: print what would change (the
                             rulesets, run's command), change and run nothing
      --images DIR           lock, unlock: what the CRIU dump in DIR took
                             (pstree.img, files.img), as NAME-cPID of its root;
                             no --mode, --ipv6, --all, --criu, --force,
                             --dry-run, --action-script
      --hold                 run, iptables namespace lock: hold what the lock
                             stops (NFQUEUE, at most 4096 packets; the excess
                             and all of it if netlock dies are dropped) and let
                             it through at the unlock; needs --allow-ffi
      --json                 one JSON object per target (list: per lock; run:
                             lock, command, unlock) per line on stdout; with
                             --dry-run the trace goes to stderr
  -q, --quiet                print nothing on success
  -v, --verbose              show each spawned command and its stderr (not
                             with -q)
  -h, --help                 show this help
  -V, --version              show the version

Exit codes: 0 success (status: all locked), 1 operation failed (nothing left
half-applied; also no such process or namespace), 2 usage error, 3 status: a
target is not locked.
run: COMMAND's status (128+N if killed by signal N), 125 netlock failed,
126 COMMAND cannot run, 127 COMMAND not found.

Needs root (CAP_NET_ADMIN) or --userns, and Deno's --allow-run=nsenter
(--hold: --allow-ffi too).
`;
}
