/**
 * `netlock run`: lock, run a command with inherited stdio, and always
 * unlock — when the command succeeds, fails or cannot start, and when
 * netlock receives SIGINT, SIGTERM or SIGHUP (sent on to the command).
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { lockNetwork } from "../operations.ts";
import { runCommand } from "../exec/runner.ts";
import type { NetlockOptions, NetworkLock, Target, UnlockResult } from "../common/types.ts";

/** Exit status when netlock itself failed (the lock or the unlock). */
export const RUN_FAILED = 125;
/** Exit status when the command could not be found. */
export const RUN_NOT_FOUND = 127;
/** Exit status when the command was found but could not be started. */
export const RUN_CANNOT_EXECUTE = 126;

const FORWARDED: Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP"];
const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

/** What `runLocked` did. */
export interface RunLockedResult {
  /** The exit status for netlock: the command's, 128+N for signal N, 125/126/127. */
  exitCode: number;
  /** The lock, when it was made. */
  lock?: NetworkLock;
  /** The unlock, when it was done. */
  unlock?: UnlockResult;
  /** Why netlock failed, or why the command did not run. */
  error?: unknown;
}

/**
 * Locks the target, runs `argv` with inherited stdio, unlocks, and returns
 * the exit status to use (2 without Deno's permission to run the command,
 * checked before anything is locked). Never throws.
 *
 * @example
 * ```ts ignore
 * import { runLocked } from "./run_locked.ts";
 *
 * const { exitCode } = await runLocked({ netns: "blue" }, ["criu", "dump", "-t", "1234"]);
 * Deno.exit(exitCode);
 * ```
 *
 * @param target What to lock.
 * @param argv The command and its arguments.
 * @param options Lock options.
 * @returns The exit status and what happened.
 */
export async function runLocked(
  target: Target,
  argv: readonly string[],
  options: NetlockOptions = {},
): Promise<RunLockedResult> {
  const command = argv[0];
  if (Deno.permissions.querySync({ name: "run", command }).state !== "granted") {
    // Checked before locking: nothing is applied for a command that cannot run.
    const error = new NetlockError(
      "DENO_PERMISSION",
      `requires permission to run ${command}: add --allow-run=${command}`,
    );
    return { exitCode: 2, error };
  }
  // A signal before the command starts must not kill netlock mid-lock: note
  // it, skip the command, unlock, and exit as if the command died of it.
  let pending: Deno.Signal | undefined;
  const listeners = FORWARDED.map((signal) => {
    const note = () => pending ??= signal;
    Deno.addSignalListener(signal, note);
    return () => Deno.removeSignalListener(signal, note);
  });
  try {
    let lock: NetworkLock;
    try {
      lock = await lockNetwork(target, options);
    } catch (error) {
      return { exitCode: RUN_FAILED, error };
    }
    let exitCode: number;
    let error: unknown;
    if (pending) {
      exitCode = 128 + SIGNAL_NUMBERS[pending];
    } else {
      try {
        const result = await runCommand(command, {
          args: argv.slice(1),
          stdio: "inherit",
          timeoutMs: 0,
          forwardSignals: FORWARDED,
          signal: options.signal,
        });
        exitCode = result.code;
      } catch (cause) {
        error = cause;
        exitCode = cause instanceof NetlockError && cause.code === "TOOL_NOT_FOUND"
          ? RUN_NOT_FOUND
          : cause instanceof NetlockError && cause.code === "DENO_PERMISSION"
          ? RUN_FAILED
          : RUN_CANNOT_EXECUTE;
      }
    }
    try {
      const unlock = await lock.unlock();
      return { exitCode, lock, unlock, error };
    } catch (unlockError) {
      return { exitCode: RUN_FAILED, lock, error: unlockError };
    }
  } finally {
    for (const remove of listeners) remove();
  }
}
