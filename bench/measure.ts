/** Timing and memory helpers of the benchmarks. */

import { runCommand } from "../lib/exec/runner.ts";

/** Runs an argv (stdin from `input`) through netlock's runner; throws unless it exits 0. */
export async function run(argv: string[], input?: string): Promise<void> {
  const result = await runCommand(argv[0], { args: argv.slice(1), stdin: input, timeoutMs: 0 });
  if (!result.success) throw new Error(`${argv.join(" ")}: ${result.stderr}`);
}

/** Milliseconds `fn` took. */
export async function time(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

/** The median of some samples. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * Peak resident memory of a command in KiB: its VmHWM (a high-water mark,
 * so the last reading before it exits is the peak), read every millisecond.
 */
export async function peakRssKiB(argv: string[]): Promise<number> {
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let peak = 0;
  let done = false;
  const status = child.status.then((s) => {
    done = true;
    return s;
  });
  while (!done) {
    try {
      const text = await Deno.readTextFile(`/proc/${child.pid}/status`);
      const kib = Number(text.match(/^VmHWM:\s+([0-9]+) kB$/m)?.[1] ?? 0);
      if (kib > peak) peak = kib;
    } catch {
      // Exited between the check and the read.
    }
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  if (!(await status).success) throw new Error(`${argv.join(" ")} failed`);
  return peak;
}
