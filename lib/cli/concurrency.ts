/**
 * Bounded parallelism for many targets in one call.
 *
 * @module
 */

/**
 * Maps `items` through `fn` with at most `limit` calls in flight, keeping
 * the order of results. Every item is settled; nothing is abandoned.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mapSettledLimit } from "./concurrency.ts";
 *
 * const results = await mapSettledLimit([1, 2, 3], 2, (n) => Promise.resolve(n * 2));
 * assert(results.map((r) => r.status === "fulfilled" && r.value).join() === "2,4,6");
 * ```
 *
 * @param items The inputs.
 * @param limit The most calls at once (at least 1).
 * @param fn The work for one item.
 * @returns One settled result per item, in order.
 */
export async function mapSettledLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<PromiseSettledResult<R>[]> {
  const results = new Array<PromiseSettledResult<R>>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      try {
        results[index] = { status: "fulfilled", value: await fn(items[index], index) };
      } catch (reason) {
        results[index] = { status: "rejected", reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return results;
}
