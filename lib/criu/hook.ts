/**
 * netlock as CRIU's action script: `criu dump --network-lock skip
 * --action-script /path/to/cli.ts`. CRIU runs the script with no arguments
 * and tells it what to do through the environment.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { renderNftOpen } from "../nftables/ruleset.ts";
import { processLockName } from "../connections/ruleset.ts";
import { parseChoice, parseMark, parsePid, validateName } from "../common/options.ts";
import type { Family, NetlockOptions } from "../common/types.ts";

/** The environment variables the hook reads (and the shebang grants). */
export const HOOK_ENV = [
  "CRTOOLS_SCRIPT_ACTION",
  "CRTOOLS_INIT_PID",
  "NETLOCK_BACKEND",
  "NETLOCK_NAME",
  "NETLOCK_MARK",
] as const;

/** What the hook will do. */
export type HookPlan =
  | { action: "none" }
  | { action: "lock" | "unlock"; pid: number; options: NetlockOptions }
  /**
   * `pre-dump` without the warm helper: a tree that shares CRIU's namespace
   * cannot be kept locked (nothing would unlock it when CRIU is gone), so
   * the dump is refused; any other tree is fine.
   */
  | { action: "refuse-host-tree"; pid: number; options: NetlockOptions };

/**
 * Decides what CRIU asked for: `network-lock` locks `CRTOOLS_INIT_PID`'s
 * network, `network-unlock` unlocks it, `pre-dump` (which reaches cli.ts
 * only when criu-hook.sh's helper could not start) refuses a tree that
 * shares CRIU's namespace, every other action does nothing.
 * `NETLOCK_BACKEND`, `NETLOCK_NAME` and `NETLOCK_MARK` are validated like
 * the flags (a bad one throws `TypeError`/`RangeError`); a missing or bad
 * `CRTOOLS_INIT_PID` on a network action throws `INVALID_ENVIRONMENT`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { planCriuHook } from "./hook.ts";
 *
 * const env: Record<string, string> = { CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "42" };
 * const plan = planCriuHook((name) => env[name]);
 * assert(plan.action === "lock" && plan.pid === 42);
 * assert(planCriuHook(() => "post-dump").action === "none");
 * ```
 *
 * @param env Reads one environment variable.
 * @returns The plan.
 */
export function planCriuHook(env: (name: typeof HOOK_ENV[number]) => string | undefined): HookPlan {
  const action = env("CRTOOLS_SCRIPT_ACTION");
  if (action === "pre-dump" && env("CRTOOLS_INIT_PID")) {
    return { action: "refuse-host-tree", pid: pidFrom(action, env), options: hookOptions(env) };
  }
  if (action !== "network-lock" && action !== "network-unlock") return { action: "none" };
  const options = hookOptions(env);
  const pid = pidFrom(action, env);
  return { action: action === "network-lock" ? "lock" : "unlock", pid, options };
}

function pidFrom(
  action: string,
  env: (name: typeof HOOK_ENV[number]) => string | undefined,
): number {
  const pidText = env("CRTOOLS_INIT_PID");
  if (pidText === undefined || pidText === "") {
    throw new NetlockError(
      "INVALID_ENVIRONMENT",
      `CRIU action ${action}: CRTOOLS_INIT_PID is not set`,
    );
  }
  try {
    return parsePid(pidText);
  } catch (error) {
    throw new NetlockError(
      "INVALID_ENVIRONMENT",
      `CRIU action ${action}: CRTOOLS_INIT_PID: ${(error as Error).message}`,
    );
  }
}

/**
 * The lock options CRIU's action script takes from its environment:
 * `NETLOCK_BACKEND`, `NETLOCK_NAME` and `NETLOCK_MARK`, validated like the
 * flags (a bad one throws `TypeError`/`RangeError`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { hookOptions } from "./hook.ts";
 *
 * const env: Record<string, string> = { NETLOCK_BACKEND: "nftables" };
 * assert(hookOptions((name) => env[name]).backend === "nftables");
 * ```
 *
 * @param env Reads one environment variable.
 * @returns The options.
 */
export function hookOptions(
  env: (name: typeof HOOK_ENV[number]) => string | undefined,
): NetlockOptions {
  const options: NetlockOptions = {};
  const backend = env("NETLOCK_BACKEND");
  const name = env("NETLOCK_NAME");
  const mark = env("NETLOCK_MARK");
  if (backend !== undefined) {
    options.backend = parseChoice(
      "NETLOCK_BACKEND",
      backend,
      [
        "iptables",
        "nftables",
        "auto",
      ] as const,
    );
  }
  if (name !== undefined) options.name = validateNameFrom("NETLOCK_NAME", name);
  if (mark !== undefined) options.mark = parseMarkFrom("NETLOCK_MARK", mark);
  return options;
}

function validateNameFrom(variable: string, value: string): string {
  try {
    return validateName(value);
  } catch (error) {
    throw new TypeError(`${variable}: ${(error as Error).message}`);
  }
}

function parseMarkFrom(variable: string, value: string): number {
  try {
    return parseMark(value);
  } catch (error) {
    throw new TypeError(`${variable}: ${(error as Error).message}`);
  }
}

/**
 * How a restore lets traffic through the lock a dump's images hold: one
 * `nft -f -` script, written next to the images by the dump's helper and run
 * by `criu-hook.sh` at the restore's `network-unlock`, so that a restore
 * starts no Deno. It opens the lock and deletes nothing (a deletion waits
 * for an RCU grace period, 10-22 ms here, inside the restore clock): an
 * `accept` at the head of both chains of the nftables table, or, with
 * iptables (iptables-nft: its rules are nf_tables objects), a `return` at
 * the head of the lock chain in every family, in one transaction. The
 * opened lock is removed after the restore (`finish`, at `post-resume`). On
 * legacy iptables the script fails and the hook falls back to the full
 * unlock.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderRestoreUnlock } from "./hook.ts";
 *
 * const plan = renderRestoreUnlock({ backend: "iptables", families: ["ipv4", "ipv6"], name: "NETLOCK", mark: 0xc114 });
 * assert.equal(plan.script, "insert rule ip filter NETLOCK return\ninsert rule ip6 filter NETLOCK return\n");
 * assert(plan.finish);
 * ```
 *
 * @param lock The lock the dump made.
 * @returns The script, and whether anything is left to remove after it.
 */
export function renderRestoreUnlock(
  lock: { backend: "iptables" | "nftables"; families: Family[]; name: string; mark: number },
): { script: string; finish: boolean } {
  if (lock.backend === "nftables") return { script: renderNftOpen(lock), finish: true };
  const tables = lock.families.map((family) => family === "ipv4" ? "ip" : "ip6");
  return {
    script: tables.map((table) => `insert rule ${table} filter ${lock.name} return\n`).join(""),
    finish: true,
  };
}

/**
 * How a restore lets traffic through the locks a dump of a tree that shares
 * CRIU's namespace left (see lib/criu/tree_lock.ts): one `nft -f -` script
 * run by `criu-hook.sh` at `post-restore`, in its own namespace, the last
 * action before CRIU's own unlock. It deletes nothing: it inserts a bare
 * `accept` ahead of the drops of each lock table (the connection lock's
 * with nftables, the cgroup lock's when the tree was locked by cgroup), and
 * `return` at the head of the connection chain in every family with
 * iptables (iptables-nft: its rules are nf_tables objects). An nf_tables
 * transaction that deletes anything waits for an RCU grace period, 11-15 ms
 * here, longer than the whole restore of CRIU's own unlock; an insert costs
 * about 2 ms. What is left, opened, is removed after the restore clock
 * (`finish`, at `post-resume`). A table or chain that is not there fails
 * the script, and the hook falls back to the full unlock.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderTreeRestoreUnlock } from "./hook.ts";
 *
 * const plan = renderTreeRestoreUnlock({ backend: "nftables", families: ["ipv4"], name: "NETLOCK", pid: 42, cgroup: true });
 * assert.equal(plan.script, "insert rule inet NETLOCK-c42 input accept\n" +
 *   "insert rule inet NETLOCK-c42 output accept\n" +
 *   "insert rule inet NETLOCK-g42 input accept\ninsert rule inet NETLOCK-g42 output accept\n");
 * assert.equal(plan.finish, true);
 * ```
 *
 * @param lock The locks the dump left: backend, families, name, the tree's
 *   root, and whether it was locked by its cgroup too.
 * @returns The script, and whether anything is left to remove after it.
 */
export function renderTreeRestoreUnlock(
  lock: {
    backend: "iptables" | "nftables";
    families: Family[];
    name: string;
    pid: number;
    cgroup?: boolean;
  },
): { script: string; finish: true } {
  const open = (kind: "connections" | "cgroup") => {
    const name = processLockName(lock.name, kind, lock.pid);
    return `insert rule inet ${name} input accept\ninsert rule inet ${name} output accept\n`;
  };
  const chain = processLockName(lock.name, "connections", lock.pid);
  const connections = lock.backend === "nftables"
    ? open("connections")
    : lock.families.map((family) => family === "ipv4" ? "ip" : "ip6")
      .map((t) => `insert rule ${t} filter ${chain} return\n`).join("");
  return { script: connections + (lock.cgroup ? open("cgroup") : ""), finish: true };
}
