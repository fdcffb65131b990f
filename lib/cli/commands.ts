/**
 * The CLI's commands that act on targets (`lock`, `unlock`, `status`,
 * `list`, `run`, and `--images`): they call the library and print its reports. Loaded only
 * for them, so that `--version`, `--help` and `rules` start small.
 *
 * @module
 */

import type { Output } from "./args.ts";
import { mapSettledLimit } from "./concurrency.ts";
import { NetlockError } from "../common/errors.ts";
import { getLockStatus, listLocks, lockNetwork, unlockNetwork } from "../operations.ts";
import {
  errorMessage,
  humanSuccess,
  jsonFailure,
  jsonLock,
  jsonRun,
  jsonSuccess,
  lockTable,
  type ReportCommand,
  targetLabel,
  type TargetName,
} from "./report.ts";
import { runLocked } from "./run_locked.ts";
import { lockImages, unlockImages } from "../criu/images.ts";
import type { LockInfo, NetlockOptions, OperationResult, Target } from "../common/types.ts";
import { EXIT, printError, printWarning, write, writeSync } from "../common/output.ts";

/** How many targets are worked on at once. */
const PARALLEL_TARGETS = 8;

/**
 * `lock`, `unlock` or `status` of every target, 8 at a time, each reported.
 *
 * @param command The command.
 * @param targets The targets.
 * @param baseOptions The options.
 * @param output How to print.
 * @returns The exit code.
 */
export async function forTargets(
  command: ReportCommand,
  targets: Target[],
  baseOptions: NetlockOptions,
  output: Output,
): Promise<number> {
  const options = { ...baseOptions, log: logger(baseOptions, output) };
  const operation: (target: Target) => Promise<OperationResult> = command === "lock"
    ? (target) => lockNetwork(target, options)
    : command === "unlock"
    ? (target) => unlockNetwork(target, options)
    : (target) => getLockStatus(target, options);
  const outcomes = await mapSettledLimit(targets, PARALLEL_TARGETS, operation);
  let exitCode: number = EXIT.ok;
  for (const [i, outcome] of outcomes.entries()) {
    if (outcome.status === "fulfilled") {
      await report(command, outcome.value, output);
      if (command === "status" && !outcome.value.locked && exitCode === EXIT.ok) {
        exitCode = EXIT.notLocked;
      }
    } else {
      await reportFailure(command, targets[i], outcome.reason, output);
      const code = isUsageError(outcome.reason) ? EXIT.usage : EXIT.failed;
      if (exitCode !== EXIT.usage) exitCode = code;
    }
  }
  return exitCode;
}

/**
 * `lock --images DIR` and `unlock --images DIR`: what a dump took, in one
 * namespace (lib/criu/images.ts).
 *
 * @param command The command.
 * @param dir The dump's image directory.
 * @param target Where (netlock's own namespace when none was given).
 * @param baseOptions The options.
 * @param output How to print.
 * @returns The exit code.
 */
export async function images(
  command: "lock" | "unlock",
  dir: string,
  target: Target,
  baseOptions: NetlockOptions,
  output: Output,
): Promise<number> {
  const options = { ...baseOptions, log: logger(baseOptions, output) };
  try {
    const result = command === "lock"
      ? await lockImages(dir, target, options)
      : await unlockImages(dir, target, options);
    await report(command, result, output);
    return EXIT.ok;
  } catch (error) {
    await reportFailure(command, target, error, output);
    return isUsageError(error) ? EXIT.usage : EXIT.failed;
  }
}

/**
 * `list`: every lock in each target's namespace (none: netlock's own).
 *
 * @param targets The targets.
 * @param baseOptions The options.
 * @param output How to print.
 * @returns The exit code.
 */
export async function list(
  targets: Target[],
  baseOptions: NetlockOptions,
  output: Output,
): Promise<number> {
  const options = { ...baseOptions, log: logger(baseOptions, output) };
  // No target: netlock's own namespace.
  const wanted: (Target | undefined)[] = targets.length > 0 ? targets : [undefined];
  const outcomes = await mapSettledLimit(wanted, PARALLEL_TARGETS, (t) => listLocks(t, options));
  const found: LockInfo[] = [];
  const none: string[] = [];
  let exitCode: number = EXIT.ok;
  for (const [i, outcome] of outcomes.entries()) {
    const target = wanted[i];
    if (outcome.status === "rejected") {
      const name = target === undefined ? {} : targetName(target);
      if (output.json) await write(Deno.stdout, `${jsonFailure("list", name, outcome.reason)}\n`);
      printError(errorMessage(outcome.reason));
      if (exitCode !== EXIT.usage) {
        exitCode = isUsageError(outcome.reason) ? EXIT.usage : EXIT.failed;
      }
    } else if (outcome.value.length === 0) {
      const where = target === undefined
        ? "netlock's own namespace"
        : targetLabel(targetName(target));
      none.push(`no locks named ${options.name ?? "NETLOCK"} in ${where}`);
    } else found.push(...outcome.value);
  }
  if (output.json) {
    for (const lock of found) await write(Deno.stdout, `${jsonLock(lock)}\n`);
  } else if (!output.quiet) {
    const lines = [...(found.length > 0 ? [lockTable(found)] : []), ...none];
    if (lines.length > 0) await write(Deno.stdout, `${lines.join("\n")}\n`);
  }
  return exitCode;
}

/**
 * `run`: lock, run the command, always unlock.
 *
 * @param target The target.
 * @param argv The command.
 * @param baseOptions The options.
 * @param output How to print.
 * @param hold Hold what the lock would drop (`--hold`).
 * @returns The exit code.
 */
export async function run(
  target: Target,
  argv: string[],
  baseOptions: NetlockOptions,
  output: Output,
  hold = false,
): Promise<number> {
  const options = { ...baseOptions, log: logger(baseOptions, output), hold };
  const name = targetName(target);
  // The command owns stdout, except in a dry run, which runs no command.
  const human = baseOptions.dryRun ? Deno.stdout : Deno.stderr;
  const prefix = baseOptions.dryRun ? "" : "netlock: ";
  const result = await runLocked(target, argv, options, async (lock) => {
    if (output.json) await write(Deno.stdout, `${jsonSuccess("lock", lock)}\n`);
    else if (!output.quiet) writeSync(human, `${prefix}${humanSuccess("lock", lock)}\n`);
  });
  if (result.failed === "lock" && output.json) {
    await write(Deno.stdout, `${jsonFailure("lock", name, result.error)}\n`);
  }
  if (result.dryRun || result.commandExit !== undefined || result.failed === "command") {
    const outcome = result.failed === "command"
      ? { error: result.error, exitCode: result.exitCode }
      : { exitCode: result.commandExit, dryRun: result.dryRun };
    if (output.json) await write(Deno.stdout, `${jsonRun(name, argv, outcome)}\n`);
  }
  if (result.dryRun && !output.json && !output.quiet && result.lock) {
    writeSync(human, `would unlock ${targetLabel(name)} when it exits\n`);
  }
  if (result.error !== undefined) printError(errorMessage(result.error));
  if (result.failed === "unlock" && output.json) {
    await write(Deno.stdout, `${jsonFailure("unlock", name, result.error)}\n`);
  }
  for (const warning of result.warnings ?? []) printWarning(warning);
  if (result.unlock) {
    for (const warning of result.unlock.warnings ?? []) printWarning(warning);
    if (output.json) await write(Deno.stdout, `${jsonSuccess("unlock", result.unlock)}\n`);
    else if (!output.quiet) writeSync(human, `${prefix}${humanSuccess("unlock", result.unlock)}\n`);
    if (result.released !== undefined && !output.json && !output.quiet) {
      writeSync(human, `${prefix}let through ${result.released} held packet(s)\n`);
    }
  }
  return result.exitCode;
}

async function report(
  command: ReportCommand,
  result: OperationResult,
  output: Output,
): Promise<void> {
  for (const warning of result.warnings ?? []) printWarning(warning);
  if (output.json) await write(Deno.stdout, `${jsonSuccess(command, result)}\n`);
  else if (!output.quiet) await write(Deno.stdout, `${humanSuccess(command, result)}\n`);
}

async function reportFailure(
  command: ReportCommand,
  target: Target,
  error: unknown,
  output: Output,
): Promise<void> {
  if (output.json) await write(Deno.stdout, `${jsonFailure(command, targetName(target), error)}\n`);
  printError(errorMessage(error));
}

/**
 * Where the library's log lines go. A dry run's trace (the `would ...`
 * lines) is its output: on stdout, or on stderr when stdout carries JSON;
 * the reads behind it and the tools' stderr only with `-v`, on stderr.
 */
function logger(options: NetlockOptions, output: Output): ((line: string) => void) | undefined {
  const verbose = (line: string) => writeSync(Deno.stderr, `${line}\n`);
  if (options.dryRun) {
    const trace = output.json ? Deno.stderr : Deno.stdout;
    return (line) => {
      if (line.startsWith("would ")) writeSync(trace, `${line}\n`);
      else if (output.verbose) verbose(line);
    };
  }
  return output.verbose ? verbose : undefined;
}

export function isUsageError(error: unknown): boolean {
  return error instanceof TypeError || error instanceof RangeError ||
    (error instanceof NetlockError && error.code === "DENO_PERMISSION");
}

function targetName(target: Target): TargetName {
  if (typeof target === "number") return { pid: target };
  return "pid" in target ? { pid: target.pid } : { path: target.netns };
}
