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
 * The 95% interval of the ratio of two medians (netlock's over the
 * reference's), by bootstrap: each sample set resampled with replacement,
 * the ratio of the resamples' medians taken `resamples` times, and the 2.5th
 * and 97.5th percentiles of those ratios. Why it is printed: a step that waits
 * for the kernel's RCU grace period (an nf_tables delete) spreads over several
 * 4 ms jiffies on both sides, so a ratio of medians of a few dozen rounds
 * moves by a tenth from run to run; the interval says how far. The generator
 * has a fixed seed, so the same samples give the same interval.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ratioInterval } from "./measure.ts";
 * assert.deepEqual(ratioInterval([4, 4, 4], [2, 2, 2]), [2, 2]);
 * ```
 */
export function ratioInterval(
  netlock: number[],
  reference: number[],
  resamples = 2000,
): [number, number] {
  let seed = 0x2545f491;
  // mulberry32: small, fast, and good enough to pick sample indexes.
  const random = (): number => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const resample = (values: number[]): number[] =>
    values.map(() => values[Math.floor(random() * values.length)]);
  const ratios: number[] = [];
  for (let i = 0; i < resamples; i++) {
    ratios.push(median(resample(netlock)) / median(resample(reference)));
  }
  ratios.sort((a, b) => a - b);
  return [ratios[Math.floor(resamples * 0.025)], ratios[Math.ceil(resamples * 0.975) - 1]];
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
