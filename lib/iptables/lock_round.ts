/**
 * The iptables lock in one spawn: the restores of both families, which the
 * lock starts in the same tick, run together in one shell inside the
 * target's namespace, in parallel; once both ended the same shell reads
 * both filter tables, which the lock asks for next (its check of every
 * family after all were applied). The lock's code is unchanged: this is a
 * {@linkcode ToolExec} that answers each of its calls with what that tool
 * did in the shared shell. It saves a cold CLI a round of spawns, about a
 * fifth of `netlock lock PID` (issue 20).
 *
 * Anything unusual runs as before, tool by tool: a restore with a signal or
 * a large input, a missing tool (or no `timeout(1)`), a read that failed or
 * was not the next call. The round runs under `timeout(1)`, which stops
 * its whole process group at the lock's timeout (a tool that hangs too);
 * a restore it stopped is reported as the runner reports a timeout.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import type { ToolExec } from "../exec/nsenter.ts";
import { type RunResult, shellStatusSignal } from "../exec/runner.ts";
import { LOCK_ROUND_SH } from "../exec/shell_programs.ts";
import { GuardRefusal } from "../netns/guard.ts";

/** The restores that may share a round, and the read that follows each. */
const READ_AFTER: Record<string, string> = {
  "iptables-restore": "iptables-save",
  "ip6tables-restore": "ip6tables-save",
};

/** Larger inputs (connection locks) go through stdin, tool by tool. */
const MAX_INPUT = 32 * 1024;

/** timeout(1)'s exit code when the round's time was up. */
const TIMED_OUT = 124;

/**
 * The round: lib/iptables/lock_round.sh (its arguments and the blocks it
 * prints are said there), run by `/bin/sh -c` (an argument, not stdin: a
 * cold process writes a pipe slowly).
 */
export const ROUND_SCRIPT: string = LOCK_ROUND_SH;

interface Call {
  tool: string;
  stdin: string;
  resolve: (result: RunResult) => void;
  reject: (error: unknown) => void;
}

/**
 * Wraps a lock's exec so that the restores it starts in the same tick run
 * in one shell, followed by the reads it will ask for next.
 *
 * @example
 * ```ts
 * import { lockRound } from "./lock_round.ts";
 * import { renderIptablesLock } from "./ruleset.ts";
 * import { nsenterExec } from "../exec/nsenter.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const rules = renderIptablesLock({ name: "NETLOCK", mark: 0xC114 });
 *   const inTarget = nsenterExec(["--target", "1234", "--net"], { timeoutMs: 10_000 });
 *   const exec = lockRound(inTarget, 10_000);
 *   const [v4, v6] = await Promise.all([
 *     exec("iptables-restore", ["-w", "--noflush"], rules),
 *     exec("ip6tables-restore", ["-w", "--noflush"], rules),
 *   ]);
 *   const table = await exec("iptables-save", ["-t", "filter"]); // read in the same spawn
 *   console.log(v4.code, v6.code, table.stdout);
 * }
 * ```
 *
 * @param exec Runs a tool in the target's namespace (the guarded exec).
 * @param timeoutMs The timeout of the round (as of each tool without it).
 * @returns The wrapped exec.
 */
export function lockRound(exec: ToolExec, timeoutMs: number): ToolExec {
  let batch: Call[] | undefined;
  // What the round read, for the next read of each table only.
  const reads = new Map<string, RunResult>();

  // The cause keeps what the guard knows: whether the tool ran at all.
  const restoreTimeout = (tool: string, cause?: unknown): NetlockError =>
    new NetlockError(
      "TIMEOUT",
      `${tool} did not finish within ${timeoutMs / 1000} s and was killed`,
      { cause },
    );

  const flush = async (calls: Call[]): Promise<void> => {
    const args = calls.flatMap((call) => [
      call.tool,
      READ_AFTER[call.tool],
      call.stdin.replace(/\n$/, ""),
    ]);
    let ran: RunResult;
    try {
      // timeout(1) signals the round's whole process group (a hung tool too),
      // and before the runner kills timeout(1) itself at the lock's timeout.
      const seconds = (share: number) => (timeoutMs * share / 1000).toFixed(3);
      ran = await exec("timeout", [
        "-k",
        seconds(0.1),
        seconds(0.8),
        "/bin/sh",
        "-c",
        ROUND_SCRIPT,
        "netlock-lock-round",
        ...args,
      ]);
    } catch (error) {
      // The guard refused (or the spawn failed): every restore hears it. A
      // round the runner stopped (nsenter hung) is each restore's timeout.
      const timedOut = error instanceof NetlockError && error.code === "TIMEOUT";
      for (const call of calls) call.reject(timedOut ? restoreTimeout(call.tool, error) : error);
      return;
    }
    const blocks = parseBlocks(`${ran.stdout}\n${ran.stderr}`);
    const complete = blocks.restore.size === calls.length;
    if (ran.code === TIMED_OUT ? blocks.restore.size === 0 : ran.code !== 0 || !complete) {
      // Nothing ran (a missing tool, no timeout(1)): tool by tool, which says what is missing.
      for (const call of calls) {
        exec(call.tool, ["-w", "--noflush"], call.stdin).then(call.resolve, call.reject);
      }
      return;
    }
    for (const [i, call] of calls.entries()) {
      const restored = blocks.restore.get(i);
      if (restored === undefined) {
        // Still running when the round's time was up.
        call.reject(restoreTimeout(call.tool));
        continue;
      }
      if (restored.status === "-") {
        call.reject(new GuardRefusal("no-ipv6", "the target's kernel has no IPv6"));
        continue;
      }
      const read = blocks.save.get(i);
      const tool = READ_AFTER[call.tool];
      if (read?.status === "0") reads.set(tool, result([tool], 0, `${read.text}\n`, ""));
      const stderr = restored.text === "" ? "" : `${restored.text}\n`;
      call.resolve(result([call.tool], Number(restored.status), "", stderr));
    }
  };

  return (tool, args, stdin, signal) => {
    const read = args.join(" ") === "-t filter" ? reads.get(tool) : undefined;
    if (read) {
      reads.delete(tool);
      return Promise.resolve(read);
    }
    reads.clear();
    const joinable = tool in READ_AFTER && args.join(" ") === "-w --noflush" &&
      typeof stdin === "string" && stdin.length <= MAX_INPUT && signal === undefined &&
      !(batch ?? []).some((call) => call.tool === tool);
    if (!joinable) return exec(tool, args, stdin, signal);
    return new Promise<RunResult>((resolve, reject) => {
      if (batch === undefined) {
        const calls: Call[] = batch = [];
        // Every restore of this tick joins; then the round runs.
        queueMicrotask(() => {
          batch = undefined;
          flush(calls);
        });
      }
      batch.push({ tool, stdin, resolve, reject });
    });
  };
}

function result(argv: string[], code: number, stdout: string, stderr: string): RunResult {
  const signal = shellStatusSignal(code);
  return { argv, code, signal, success: code === 0, stdout, stderr, stdinClosedEarly: false };
}

/** The round's blocks, by kind and family index. */
function parseBlocks(stdout: string): {
  restore: Map<number, { status: string; text: string }>;
  save: Map<number, { status: string; text: string }>;
} {
  const found = { restore: new Map(), save: new Map() };
  const lines = stdout.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const head = lines[i].match(/^@@(restore|save) ([01]) (-|[0-9]+)$/);
    if (!head) continue;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i] !== "@@end"; i++) body.push(lines[i]);
    found[head[1] as "restore" | "save"].set(Number(head[2]), {
      status: head[3],
      text: body.join("\n"),
    });
  }
  return found;
}
