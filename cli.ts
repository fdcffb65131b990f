#!/usr/bin/env -S deno run --allow-run=nsenter --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK
/**
 * The netlock command line: parses flags, calls the library, prints.
 *
 * ```sh
 * deno run --allow-run=nsenter cli.ts lock 1234
 * ```
 *
 * Run with no arguments while `CRTOOLS_SCRIPT_ACTION` is set, it is CRIU's
 * action script (`criu dump --network-lock skip --action-script cli.ts`).
 *
 * @module
 */

import type { Invocation, Output } from "./lib/cli/args.ts";
import { helpText } from "./lib/cli/help.ts";
import { rulesText } from "./lib/cli/rules_text.ts";
import { mapSettledLimit } from "./lib/cli/concurrency.ts";
import { HOOK_ENV, hookOptions, planCriuHook } from "./lib/criu/hook.ts";
import { NetlockError } from "./lib/common/errors.ts";
import { getLockStatus, listLocks, lockNetwork, unlockNetwork } from "./lib/operations.ts";
import {
  errorMessage,
  humanSuccess,
  jsonFailure,
  jsonLock,
  jsonRun,
  jsonSuccess,
  jsonUsageError,
  lockTable,
  type ReportCommand,
  targetLabel,
  type TargetName,
} from "./lib/cli/report.ts";
import { runLocked } from "./lib/cli/run_locked.ts";
import type { LockInfo, NetlockOptions, OperationResult, Target } from "./lib/common/types.ts";
import { VERSION } from "./lib/common/version.ts";

/** Exit codes of the CLI. */
const EXIT = { ok: 0, failed: 1, usage: 2, notLocked: 3 } as const;

/** How many targets are worked on at once. */
const PARALLEL_TARGETS = 8;

/**
 * Runs the CLI with the given arguments and returns the exit code.
 *
 * @param args The arguments after the program name.
 * @returns The process exit code.
 */
export async function main(args: string[]): Promise<number> {
  // As CRIU's action script, netlock runs inside the dump's frozen window:
  // it skips loading the argument parser (node:util alone costs ~10 ms).
  if (args.length === 0 && readEnv("CRTOOLS_SCRIPT_ACTION") !== undefined) return await criuHook();
  // criu-hook.sh starts the warm helper this way (not a user command).
  if (args[0] === "criu-hook" && args[1] === "--serve") return await criuHelper(args.slice(2));
  const { commandWord, jsonRequested, parseInvocation, usageMessage } = await import(
    "./lib/cli/args.ts"
  );
  let invocation: Invocation;
  try {
    invocation = parseInvocation(args);
  } catch (error) {
    const message = usageMessage(error);
    if (jsonRequested(args)) {
      await write(Deno.stdout, `${jsonUsageError(commandWord(args), message)}\n`);
    }
    printError(message);
    return EXIT.usage;
  }
  switch (invocation.kind) {
    case "help":
      await write(Deno.stdout, helpText(VERSION));
      return EXIT.ok;
    case "version":
      await write(Deno.stdout, `netlock ${VERSION}\n`);
      return EXIT.ok;
    case "rules":
      await write(Deno.stdout, rulesText(invocation.options, invocation.action));
      return EXIT.ok;
    case "hook":
      return await criuHook();
    case "run":
      return await run(invocation.target, invocation.argv, invocation.options, invocation.output);
    case "list":
      return await list(invocation.targets, invocation.options, invocation.output);
    case "targets":
      return await forTargets(
        invocation.command,
        invocation.targets,
        invocation.options,
        invocation.output,
      );
  }
}

async function forTargets(
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

async function list(
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

async function run(
  target: Target,
  argv: string[],
  baseOptions: NetlockOptions,
  output: Output,
): Promise<number> {
  const options = { ...baseOptions, log: logger(baseOptions, output) };
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
  if (result.unlock) {
    for (const warning of result.unlock.warnings ?? []) printWarning(warning);
    if (output.json) await write(Deno.stdout, `${jsonSuccess("unlock", result.unlock)}\n`);
    else if (!output.quiet) writeSync(human, `${prefix}${humanSuccess("unlock", result.unlock)}\n`);
  }
  return result.exitCode;
}

async function criuHook(): Promise<number> {
  const denied = HOOK_ENV.filter((name) =>
    Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted"
  );
  if (denied.length > 0) {
    printError(`the CRIU hook reads its environment: add --allow-env=${HOOK_ENV.join(",")}`);
    return EXIT.usage;
  }
  let plan;
  try {
    plan = planCriuHook((name) => Deno.env.get(name));
  } catch (error) {
    printError(errorMessage(error));
    return isUsageError(error) ? EXIT.usage : EXIT.failed;
  }
  if (plan.action === "none") return EXIT.ok;
  if (plan.action === "refuse-host-tree") return await refuseHostTree(plan.pid, plan.options);
  try {
    const result = plan.action === "lock"
      ? await lockNetwork(plan.pid, plan.options)
      : await unlockNetwork(plan.pid, plan.options);
    for (const warning of result.warnings ?? []) printWarning(warning);
    return EXIT.ok;
  } catch (error) {
    printError(errorMessage(error));
    return isUsageError(error) ? EXIT.usage : EXIT.failed;
  }
}

/**
 * `pre-dump` without the warm helper: CRIU sends a tree in its own namespace
 * no network action, so only the helper can keep it locked until the
 * restore, and unlock it if it runs again; without it the dump is refused.
 */
async function refuseHostTree(pid: number, options: NetlockOptions): Promise<number> {
  const { sharesNetlockNamespace } = await import("./lib/criu/tree_lock.ts");
  try {
    if (!await sharesNetlockNamespace(pid, options)) return EXIT.ok;
  } catch (error) {
    printError(errorMessage(error));
    return EXIT.failed;
  }
  printError(
    `criu-hook: process ${pid} shares CRIU's network namespace: only criu-hook.sh's warm ` +
      "helper can keep its connections locked until the restore (and unlock them if it runs " +
      "again), and it could not start; refusing the dump",
  );
  return EXIT.failed;
}

async function criuHelper(args: string[]): Promise<number> {
  const [dir, criuPid, ...flags] = args;
  const images = flags.find((flag) => flag.startsWith("--images="))?.slice("--images=".length);
  const { serveCriuHook } = await import("./lib/criu/hook_serve.ts");
  try {
    const pidText = readEnv("CRTOOLS_INIT_PID");
    await serveCriuHook({
      dir,
      options: hookOptions((name) => readEnv(name)),
      pid: pidText ? Number(pidText) : undefined,
      criuPid: criuPid ? Number(criuPid) : undefined,
      ready: flags.includes("--ready"),
      images: images || undefined,
      log: (line) => line.startsWith("request:") ? undefined : printError(`criu-hook: ${line}`),
    });
    return EXIT.ok;
  } catch (error) {
    printError(`criu-hook helper: ${errorMessage(error)}`);
    return isUsageError(error) ? EXIT.usage : EXIT.failed;
  }
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

function isUsageError(error: unknown): boolean {
  return error instanceof TypeError || error instanceof RangeError ||
    (error instanceof NetlockError && error.code === "DENO_PERMISSION");
}

function readEnv(name: string): string | undefined {
  // Only read what was granted: never make Deno prompt.
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return undefined;
  }
  return Deno.env.get(name);
}

function targetName(target: Target): TargetName {
  if (typeof target === "number") return { pid: target };
  return "pid" in target ? { pid: target.pid } : { path: target.netns };
}

function printError(message: string): void {
  const colour = Deno.stderr.isTerminal() && !Deno.noColor;
  writeSync(Deno.stderr, `${colour ? "\x1b[31merror\x1b[0m" : "error"}: ${message}\n`);
}

function printWarning(message: string): void {
  const colour = Deno.stderr.isTerminal() && !Deno.noColor;
  writeSync(Deno.stderr, `${colour ? "\x1b[33mwarning\x1b[0m" : "warning"}: ${message}\n`);
}

async function write(stream: typeof Deno.stdout, text: string): Promise<void> {
  try {
    const bytes = new TextEncoder().encode(text);
    let written = 0;
    while (written < bytes.length) written += await stream.write(bytes.subarray(written));
  } catch {
    // A closed pipe (`netlock status | head -1`) is not netlock's failure.
  }
}

function writeSync(stream: typeof Deno.stdout, text: string): void {
  try {
    const bytes = new TextEncoder().encode(text);
    let written = 0;
    while (written < bytes.length) written += stream.writeSync(bytes.subarray(written));
  } catch {
    // See write().
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
