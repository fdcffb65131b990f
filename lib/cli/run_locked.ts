/**
 * `netlock run`: lock, run a command with inherited stdio, and always
 * unlock — when the command succeeds, fails or cannot start, and when
 * netlock receives SIGINT, SIGTERM or SIGHUP (sent on to the command).
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { lockNetwork } from "../operations.ts";
import { runCommand, shellQuote } from "../exec/runner.ts";
import { nsenterExec } from "../exec/nsenter.ts";
import type { NetlockOptions, NetworkLock, Target, UnlockResult } from "../common/types.ts";
import { toTargetRef } from "../netns/target.ts";
import { type Holder, holdQueue } from "../hold/holder.ts";
import { type ArmedUnlock, armNetworkUnlock } from "../criu/armed.ts";

/** The options of {@linkcode runLocked}: the lock's, and whether it holds. */
export interface RunLockedOptions extends NetlockOptions {
  /**
   * Hold what the lock would drop (an iptables namespace lock: NFQUEUE, a
   * holder in this process, lib/hold) and let it all through at the
   * unlock, so that peers do not wait for a retransmission. Needs Deno's
   * `--allow-ffi`. A lock that cannot hold (another backend, a connection
   * lock) drops, with a warning.
   */
  hold?: boolean;
}

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
  /** The lock, when it was made (or, in a dry run, what it would be). */
  lock?: NetworkLock;
  /** The command's own exit status (128+N for signal N), when it ran. */
  commandExit?: number;
  /** The unlock, when it was done. */
  unlock?: UnlockResult;
  /** Why netlock failed, or why the command did not run. */
  error?: unknown;
  /** Which step `error` belongs to. */
  failed?: "lock" | "command" | "unlock";
  /** A dry run: the lock was only reported, the command not run. */
  dryRun?: boolean;
  /** With `hold`: how many held packets were let through at the unlock. */
  released?: number;
  /** What the user should know (a lock that could not hold). */
  warnings?: string[];
}

/**
 * Locks the target, runs `argv` with inherited stdio, unlocks, and returns
 * the exit status to use (2 without Deno's permission to run the command,
 * checked before anything is locked). Never throws.
 *
 * @example
 * ```ts
 * import { runLocked } from "./run_locked.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const { exitCode } = await runLocked({ netns: "blue" }, ["criu", "dump", "-t", "1234"]);
 *   Deno.exit(exitCode);
 * }
 * ```
 *
 * @param target What to lock.
 * @param argv The command and its arguments.
 * @param options Lock options.
 * @param locked Told of the lock before the command starts (to report it then).
 * @returns The exit status and what happened.
 */
export async function runLocked(
  target: Target,
  argv: readonly string[],
  options: RunLockedOptions = {},
  locked?: (lock: NetworkLock) => Promise<void>,
): Promise<RunLockedResult> {
  const command = argv[0];
  if (options.hold && Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    // Checked before locking: nothing is applied.
    const error = new NetlockError(
      "DENO_PERMISSION",
      "--hold holds packets in the kernel's queue through libc: add --allow-ffi",
    );
    return { exitCode: 2, error, failed: "lock" };
  }
  if (Deno.permissions.querySync({ name: "run", command }).state !== "granted") {
    // Checked before locking: nothing is applied for a command that cannot run.
    // A scoped --allow-run that names a binary Deno cannot find is not
    // granted either: the advice to add it would be wrong, so look first.
    if (await onPath(command, options) === false) {
      const error = new NetlockError(
        "TOOL_NOT_FOUND",
        `cannot run ${command}: ${command} not found on PATH`,
      );
      return { exitCode: RUN_NOT_FOUND, error, failed: "command" };
    }
    const error = new NetlockError(
      "DENO_PERMISSION",
      `requires permission to run ${command}: add --allow-run=${command}`,
    );
    return { exitCode: 2, error, failed: "command" };
  }
  if (options.dryRun) {
    // Report the lock, name the command, run nothing.
    try {
      const lock = await lockNetwork(target, options);
      await locked?.(lock);
      options.log?.(`would run: ${argv.map(shellQuote).join(" ")}`);
      return { exitCode: 0, lock, dryRun: true };
    } catch (error) {
      return { exitCode: RUN_FAILED, error, failed: "lock" };
    }
  }
  // A signal before the command starts must not kill netlock mid-lock: note
  // it, skip the command, unlock, and exit as if the command died of it.
  let pending: Deno.Signal | undefined;
  const listeners = FORWARDED.map((signal) => {
    const note = () => pending ??= signal;
    Deno.addSignalListener(signal, note);
    return () => Deno.removeSignalListener(signal, note);
  });
  let holder: Holder | undefined;
  let opening: Promise<ArmedUnlock | undefined> | undefined;
  const warnings: string[] = [];
  try {
    let lock: NetworkLock;
    try {
      holder = options.hold ? await startHolder(target, options) : undefined;
      lock = await lockNetwork(target, {
        ...options,
        ...(holder ? { queue: holder.queue } : {}),
      });
    } catch (error) {
      return { exitCode: RUN_FAILED, error, failed: "lock" };
    }
    if (holder && (lock.mode !== "netns" || lock.backend !== "iptables")) {
      warnings.push(
        `not holding: the lock of ${
          lock.mode === "netns" ? "the nftables backend" : "connections"
        } ` +
          "drops what it stops (only an iptables namespace lock holds)",
      );
      await holder.close();
      holder = undefined;
    }
    // The opening of the lock, armed while the command runs (its tools
    // wait on stdin), so that at the unlock the held packets wait for no
    // spawn.
    if (holder) {
      opening = armNetworkUnlock(target, options, lock).catch(() => undefined);
    }
    await locked?.(lock);
    let exitCode: number;
    let error: unknown;
    let commandExit: number | undefined;
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
        exitCode = commandExit = result.code;
      } catch (cause) {
        error = namingTheCommand(cause, command);
        exitCode = cause instanceof NetlockError && cause.code === "TOOL_NOT_FOUND"
          ? RUN_NOT_FOUND
          : cause instanceof NetlockError && cause.code === "DENO_PERMISSION"
          ? RUN_FAILED
          : RUN_CANNOT_EXECUTE;
      }
    }
    const ran = { lock, ...(commandExit === undefined ? {} : { commandExit }), warnings };
    const commandFailure = error === undefined ? {} : { error, failed: "command" as const };
    try {
      let unlock: UnlockResult;
      let released: number | undefined;
      if (holder) {
        // The lock opens first (a RETURN at its head: nothing new is
        // queued, and nothing is deleted, which would unregister a hook and
        // drop what its queue holds); then what was held goes on, all at
        // once; then the lock goes. (Without the armed opening, the plain
        // unlock: what a deleted hook held is dropped, as without --hold.)
        const armed = await opening;
        opening = undefined;
        // A release that fails leaves the held packets to the kernel, which
        // drops them (as without --hold); the unlock goes on.
        const release = (held: Holder) =>
          held.release().catch((cause) => {
            warnings.push(`the held packets were dropped: ${cause.message}`);
            return undefined;
          });
        if (armed) {
          await armed.fire();
          released = await release(holder);
          unlock = await armed.finish();
        } else {
          unlock = await lock.unlock();
          released = await release(holder);
        }
        holder = undefined;
      } else {
        unlock = await lock.unlock();
      }
      return {
        exitCode,
        ...ran,
        unlock,
        ...(released === undefined ? {} : { released }),
        ...commandFailure,
      };
    } catch (unlockError) {
      return { exitCode: RUN_FAILED, ...ran, error: unlockError, failed: "unlock" };
    }
  } finally {
    // A holder not released (a failed lock or unlock) closes: the kernel
    // drops what it held, as a lock that drops would have (fail closed).
    await (await opening)?.cancel();
    await holder?.close();
    for (const remove of listeners) remove();
  }
}

/** A holder in the target's network namespace (lib/hold), for --hold. */
async function startHolder(target: Target, options: NetlockOptions): Promise<Holder> {
  const ref = toTargetRef(target, options);
  return await holdQueue(ref.path ?? `/proc/${ref.pid}/ns/net`);
}

/**
 * Whether `command` can be found on PATH, asked of a shell through nsenter
 * (the binary netlock may run); `undefined` when that cannot be asked.
 */
async function onPath(command: string, options: NetlockOptions): Promise<boolean | undefined> {
  try {
    const result = await nsenterExec([], { timeoutMs: options.timeoutMs ?? 10_000 })(
      "sh",
      ["-c", 'command -v "$1" >/dev/null', "sh", command],
    );
    return result.code === 0 ? true : result.code === 1 || result.code === 127 ? false : undefined;
  } catch {
    return undefined;
  }
}

/** The error of a command that did not start, its message naming the command once. */
function namingTheCommand(error: unknown, command: string): unknown {
  if (!(error instanceof NetlockError)) return error;
  if (error.message.toLowerCase().startsWith(`cannot run ${command.toLowerCase()}:`)) {
    return error;
  }
  return new NetlockError(error.code, `cannot run ${command}: ${error.message}`, { cause: error });
}
