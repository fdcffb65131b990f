/**
 * CRIU's environment as the plain hook reads it (`cli.ts` as CRIU's action
 * script: `criu dump --network-lock skip --action-script /path/to/cli.ts`):
 * CRIU runs the script with no arguments and tells it what to do through
 * `CRTOOLS_SCRIPT_ACTION` and `CRTOOLS_INIT_PID`; netlock's options come
 * from `NETLOCK_*`.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { parseChoice, parseMark, parsePid, validateName } from "../common/options.ts";
import type { NetlockOptions } from "../common/types.ts";

/** The environment variables the plain hook reads (cli.ts's shebang grants them, and criu-hook.sh reads its list there). */
export const HOOK_ENV = [
  "CRTOOLS_SCRIPT_ACTION",
  "CRTOOLS_INIT_PID",
  "NETLOCK_BACKEND",
  "NETLOCK_NAME",
  "NETLOCK_MARK",
] as const;

/** What the plain hook does for one CRIU action. */
export type PlainHookTask =
  | { task: "none" }
  | { task: "lock" | "unlock"; pid: number; options: NetlockOptions }
  /**
   * `pre-dump` without the warm helper: a tree that shares CRIU's namespace
   * cannot be kept locked (nothing would unlock it when CRIU is gone), so
   * the dump is refused; any other tree is fine.
   */
  | { task: "refuse-host-tree"; pid: number; options: NetlockOptions };

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
 * import { plainHookTask } from "./environment.ts";
 *
 * const env: Record<string, string> = { CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "42" };
 * const task = plainHookTask((name) => env[name]);
 * assert(task.task === "lock" && task.pid === 42);
 * assert(plainHookTask(() => "post-dump").task === "none");
 * ```
 *
 * @param env Reads one environment variable.
 * @returns The task.
 */
export function plainHookTask(
  env: (name: typeof HOOK_ENV[number]) => string | undefined,
): PlainHookTask {
  const action = env("CRTOOLS_SCRIPT_ACTION");
  if (action === "pre-dump" && env("CRTOOLS_INIT_PID")) {
    return { task: "refuse-host-tree", pid: pidFrom(action, env), options: hookOptions(env) };
  }
  if (action !== "network-lock" && action !== "network-unlock") return { task: "none" };
  const options = hookOptions(env);
  const pid = pidFrom(action, env);
  return { task: action === "network-lock" ? "lock" : "unlock", pid, options };
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
 * import { hookOptions } from "./environment.ts";
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
