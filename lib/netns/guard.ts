/**
 * The lock's fast path: instead of a separate probe spawn before the first
 * change, each first-round tool runs behind a small `/bin/sh` guard inside
 * the same `nsenter`. The guard refuses netlock's own namespace, skips IPv6
 * where the kernel has none and reports the namespace identity, then `exec`s
 * the tool — one process, so timeouts and signals reach the tool itself.
 * This saves the probe's round of spawns (3-4 ms; the guard itself costs
 * about 1 ms inside the tool's spawn) on every lock.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { type ExecSettings, nsenterExec, type ToolExec } from "../exec/nsenter.ts";
import { printedBeforeKill, type RunResult } from "../exec/runner.ts";
import { GUARD_SH } from "../exec/shell_programs.ts";
import { probeError, type TargetRef } from "./target.ts";

/**
 * The guard: lib/netns/guard.sh (its arguments, output and exit codes are
 * said there). Only shell builtins run before `exec` (no fork: the inode
 * comes from `/proc/self/fdinfo`; where the kernel does not show it, the
 * caller probes afterwards). The values are positional parameters, never
 * part of the script.
 */
export const GUARD_SCRIPT: string = GUARD_SH;

/** The guard's exit codes: its stderr line, the reason, and what netlock reports. */
const REFUSALS = {
  86: ["own namespace", "own", "the target's network namespace is netlock's own"],
  87: ["no IPv6", "no-ipv6", "the target's kernel has no IPv6"],
  88: ["cannot see netlock's namespace", "blind", "cannot compare with netlock's own namespace"],
} as const;

/**
 * Why the guard stopped a tool before it ran; nothing was applied. `own`
 * and `blind` send the lock to the full probe (which decides connection mode
 * or refuses); `no-ipv6` drops the IPv6 family.
 */
export class GuardRefusal extends NetlockError {
  /** What the guard found. */
  readonly reason: "own" | "no-ipv6" | "blind";

  /**
   * @param reason What the guard found.
   * @param message A one-line description.
   */
  constructor(reason: "own" | "no-ipv6" | "blind", message: string) {
    super(reason === "own" ? "OWN_NAMESPACE" : "TOOL_FAILED", message);
    this.reason = reason;
  }
}

const RAN_NOTHING = new WeakSet<Error>();

function ranNothing(error: NetlockError): NetlockError {
  RAN_NOTHING.add(error);
  return error;
}

/**
 * Whether an error was thrown before the guarded tool ran: a guard's refusal,
 * nsenter failing to enter the target, or a tool that could not be executed
 * (not on PATH), or an error caused by one of these. Nothing can have been
 * applied.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuardRefusal, stoppedBeforeTool } from "./guard.ts";
 *
 * assert(stoppedBeforeTool(new GuardRefusal("own", "own namespace")));
 * assert(!stoppedBeforeTool(new Error("tool failed")));
 * ```
 *
 * @param error What was thrown.
 * @returns `true` when no tool ran.
 */
export function stoppedBeforeTool(error: unknown): boolean {
  return error instanceof GuardRefusal || (error instanceof Error && RAN_NOTHING.has(error)) ||
    (error instanceof NetlockError && error.code === "TOOL_NOT_FOUND") ||
    // An error that names the tool for a spawn that ran nothing (lock_round.ts).
    (error instanceof Error && error.cause !== undefined && stoppedBeforeTool(error.cause));
}

/** What the guard reports about the target, once a guarded tool ran. */
export interface GuardReport {
  /** `net:[INODE]`, when the guard could read it. */
  netns?: string;
  /** Whether `/proc/sys/net/ipv6` exists in the target. */
  ipv6: boolean;
}

/**
 * Splits a guarded tool's result: the guard's report line and the tool's
 * own result (stdout without that line). Throws {@linkcode GuardRefusal}
 * when the guard refused. `report` is `undefined` when the guard never ran
 * (nsenter failed first, or the spawn was killed).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseGuarded } from "./guard.ts";
 *
 * const { report, result } = parseGuarded({
 *   argv: [], code: 0, signal: null, success: true,
 *   stdout: "netlock-guard 4026531840 1\nout\n", stderr: "", stdinClosedEarly: false,
 * });
 * assert(report?.netns === "net:[4026531840]" && report.ipv6);
 * assert(result.stdout === "out\n");
 * ```
 *
 * @param result What the guarded spawn returned.
 * @returns The report and the tool's result.
 */
export function parseGuarded(result: RunResult): { report?: GuardReport; result: RunResult } {
  const refusal = REFUSALS[result.code as keyof typeof REFUSALS];
  if (refusal && result.stderr.startsWith(`netlock-guard: ${refusal[0]}`)) {
    throw new GuardRefusal(refusal[1], refusal[2]);
  }
  const report = reportLine(result.stdout);
  if (!report) return { result };
  return {
    report,
    result: { ...result, stdout: result.stdout.slice(result.stdout.indexOf("\n") + 1) },
  };
}

function reportLine(stdout: string): GuardReport | undefined {
  const match = stdout.match(/^netlock-guard (-|[0-9]+) ([01])\n/);
  if (!match) return undefined;
  return { ...(match[1] === "-" ? {} : { netns: `net:[${match[1]}]` }), ipv6: match[2] === "1" };
}

/** A target entered through the guard until one guarded tool has run. */
export interface GuardedTarget {
  /** Runs a tool in the target: guarded until the guard has passed once, then plain. */
  exec: ToolExec;
  /** What the guard learned; `undefined` until a guarded tool ran. */
  report(): GuardReport | undefined;
}

/**
 * Wraps the target's `nsenter` exec in the guard. The first call asks for
 * the namespace's identity; tools named `ip6tables*` need IPv6 when
 * `checkIpv6` is set. Once a guard has passed, later tools run without it:
 * the target is known not to be netlock's own namespace. When nsenter itself
 * fails (no such process, not permitted), the probe's error is thrown.
 *
 * @example
 * ```ts
 * import { guardedTarget } from "./guard.ts";
 * import { toTargetRef } from "./target.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const target = guardedTarget(toTargetRef(1234), { timeoutMs: 10_000 }, {
 *     ownPid: Deno.pid,
 *     checkIpv6: true,
 *   });
 *   await target.exec("iptables-restore", ["-w", "--noflush"], "*filter\nCOMMIT\n");
 *   console.log(target.report()?.netns);
 * }
 * ```
 *
 * @param ref The validated target.
 * @param settings Timeout, signal and logger.
 * @param options `ownPid`: refuse netlock's own namespace (absent: no check);
 *   `checkIpv6`: refuse IPv6 tools where the kernel has no IPv6.
 * @returns The guarded exec and what it learned.
 */
export function guardedTarget(
  ref: TargetRef,
  settings: ExecSettings,
  options: { ownPid?: number; checkIpv6: boolean },
): GuardedTarget {
  const plain = nsenterExec(ref.nsenterArgs, settings);
  let passed = false;
  let netns: string | undefined;
  let ipv6 = false;
  let reportAsked = false;
  // Parallel guards: the one asked for the identity may answer last.
  const learn = (guarded: GuardReport) => {
    passed = true;
    ipv6 = guarded.ipv6;
    netns ??= guarded.netns;
  };
  const exec: ToolExec = async (tool, args, stdin, signal) => {
    if (passed) return await plain(tool, args, stdin, signal);
    const report = !reportAsked;
    reportAsked = true;
    const six = options.checkIpv6 && tool.startsWith("ip6tables");
    const params = [
      "netlock-guard",
      options.ownPid === undefined ? "-" : String(options.ownPid),
      six ? "1" : "0",
      report ? "1" : "0",
    ];
    // timeout(1) goes ahead of the guard, which then runs the command
    // itself (a shell program in its own shell): one process fewer.
    const [outer, inner] = tool === "timeout" ? splitTimeout(args) : [[], [tool, ...args]];
    let raw: RunResult;
    try {
      raw = await nsenterExec(ref.nsenterArgs, settings, [
        ...outer,
        "/bin/sh",
        "-c",
        GUARD_SCRIPT,
        ...params,
      ])(
        inner[0],
        inner.slice(1),
        stdin,
        signal,
      );
    } catch (error) {
      // Killed or never started: without the guard's line, the tool never ran.
      const printed = printedBeforeKill(error) ?? "";
      const guarded = reportLine(printed);
      if (guarded) learn(guarded);
      else if (error instanceof NetlockError) ranNothing(error);
      throw error;
    }
    // No timeout(1) in the target: the tool's own failure, as when exec'd by the guard.
    if (outer.length > 0 && /^nsenter: failed to execute timeout:/.test(raw.stderr)) return raw;
    const parsed = parseGuarded(raw);
    if (parsed.report) learn(parsed.report);
    else if (!raw.success && /^nsenter: /.test(raw.stderr)) {
      throw ranNothing(probeError(ref, raw.stderr));
    }
    return parsed.result;
  };
  return { exec, report: () => passed ? { netns, ipv6 } : undefined };
}

/**
 * `timeout [-k D] [-s SIG] [--OPTION...] DURATION COMMAND...` split into
 * timeout(1) with its options and duration, and the command.
 */
function splitTimeout(args: readonly string[]): [string[], string[]] {
  let i = 0;
  while (i < args.length && args[i].startsWith("-")) {
    i += args[i] === "-k" || args[i] === "-s" ? 2 : 1;
  }
  return [["timeout", ...args.slice(0, i + 1)], args.slice(i + 1)];
}
