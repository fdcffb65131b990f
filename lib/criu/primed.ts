/**
 * Tools started ahead in a target's namespace, waiting for their stdin: an
 * armed lock or unlock (./armed.ts) only writes their rulesets when fired,
 * so that inside CRIU's window the cost is the tools' own work, not their
 * start. Spawned through the runner (lib/exec/nsenter.ts).
 *
 * @module
 */

import { nsenterExec } from "../exec/nsenter.ts";
import type { RunResult } from "../exec/runner.ts";

/** How long armed tools wait for their ruleset before they are killed (ms). */
export const ARMED_LIFETIME_MS = 600_000;

/** One tool started in the target's namespace, waiting for its stdin. */
export interface Primed {
  write(text: string): Promise<RunResult>;
  /** Ends its stdin unwritten (the tool is being killed) and waits for it. */
  cancel(): Promise<RunResult>;
}

/**
 * Starts tools in the target's namespace whose stdin is written later.
 *
 * @example
 * ```ts
 * import { firedAll, primer } from "./primed.ts";
 *
 * // Needs root and a target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const stop = new AbortController();
 *   const spawn = primer(["--net=/run/netns/blue"], undefined, stop.signal);
 *   const steps = [{ tool: spawn("nft", ["-f", "-"]), text: "add table inet NETLOCK\n" }];
 *   console.log(await firedAll(steps, 10_000, stop));
 * }
 * ```
 *
 * @param nsenterArgs How nsenter enters the target.
 * @param log Receives each spawned command (`-v`).
 * @param signal Kills every tool started (an arm cancelled).
 * @returns A function that starts one tool.
 */
export function primer(
  nsenterArgs: readonly string[],
  log: ((line: string) => void) | undefined,
  signal: AbortSignal,
): (tool: string, args: string[]) => Primed {
  const exec = nsenterExec(nsenterArgs, { timeoutMs: ARMED_LIFETIME_MS, signal, log });
  return (tool, args) => {
    let input!: ReadableStreamDefaultController<Uint8Array>;
    const stdin = new ReadableStream<Uint8Array>({
      start(controller) {
        input = controller;
      },
    });
    const done = exec(tool, args, stdin);
    // A cancelled or failed arm is seen when fired; never an unhandled rejection.
    done.catch(() => {});
    return {
      cancel() {
        try {
          input.close();
        } catch {
          // Already written or closed.
        }
        return done;
      },
      write(text) {
        try {
          input.enqueue(new TextEncoder().encode(text));
          input.close();
        } catch {
          // The tool is already gone: its result says why.
        }
        return done;
      },
    };
  };
}

/**
 * Kills the armed tools without applying anything; resolves once they are gone.
 *
 * @param steps The armed steps.
 * @param stop Aborts their spawns.
 */
export async function cancelAll(steps: { tool: Primed }[], stop: AbortController): Promise<void> {
  stop.abort();
  await Promise.allSettled(steps.map((step) => step.tool.cancel()));
}

/**
 * Fires every armed step at once; `true` when every tool took its text and exited 0.
 *
 * @param steps The armed steps and their texts.
 * @param timeoutMs How long the tools may take, once fed.
 * @param stop Aborted (the tools killed) when that time is up.
 * @returns Whether every step succeeded.
 */
export async function firedAll(
  steps: { tool: Primed; text: string }[],
  timeoutMs: number,
  stop: AbortController,
): Promise<boolean> {
  const timer = setTimeout(() => stop.abort(), timeoutMs);
  try {
    const results = await Promise.allSettled(steps.map((step) => step.tool.write(step.text)));
    return results.every((r) =>
      r.status === "fulfilled" && r.value.success && !r.value.stdinClosedEarly
    );
  } finally {
    clearTimeout(timer);
  }
}
