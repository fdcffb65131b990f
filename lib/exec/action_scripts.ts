/**
 * CRIU's action-script contract for `--action-script PATH`: each script runs
 * directly (no shell, no arguments) before the rules are applied, with
 * `CRTOOLS_SCRIPT_ACTION=network-lock`, and before they are removed, with
 * `network-unlock`; `CRTOOLS_INIT_PID` is the target PID (absent for
 * namespace targets) and `NETLOCK_NETNS` the namespace path.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { describeFailure, runCommand } from "./runner.ts";
import type { ExecSettings } from "./nsenter.ts";

/** The actions netlock runs scripts for. */
export type ScriptAction = "network-lock" | "network-unlock";

/** What the scripts are told about the target. */
export interface ScriptTarget {
  /** The target PID, for PID targets. */
  pid?: number;
  /** The namespace file: `--netns PATH`, or `/proc/PID/ns/net`. */
  netnsPath: string;
}

/**
 * Runs each script in order, stopping at the first failure, which is thrown
 * as a {@linkcode NetlockError} (`TOOL_FAILED`, or `TOOL_NOT_FOUND` /
 * `DENO_PERMISSION` when it cannot run).
 *
 * @example
 * ```ts
 * import { runActionScripts } from "./action_scripts.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   await runActionScripts(["/usr/local/bin/notify"], "network-lock",
 *     { pid: 1234, netnsPath: "/proc/1234/ns/net" }, { timeoutMs: 10_000 });
 * }
 * ```
 *
 * @param scripts The scripts' paths.
 * @param action Which action they are run for.
 * @param target The target they are told about.
 * @param settings Timeout, signal and logger.
 */
export async function runActionScripts(
  scripts: readonly string[],
  action: ScriptAction,
  target: ScriptTarget,
  settings: ExecSettings,
): Promise<void> {
  const env: Record<string, string> = {
    CRTOOLS_SCRIPT_ACTION: action,
    NETLOCK_NETNS: target.netnsPath,
  };
  if (target.pid !== undefined) env.CRTOOLS_INIT_PID = String(target.pid);
  for (const script of scripts) {
    const result = await runCommand(script, { ...settings, env, label: `action script ${script}` });
    if (!result.success) {
      throw new NetlockError(
        "TOOL_FAILED",
        `action script ${script} (${action}) failed: ${describeFailure(result, script)}`,
      );
    }
  }
}
