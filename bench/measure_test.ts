import assert from "node:assert/strict";
import { median, ratioInterval } from "./measure.ts";

/** Samples spread evenly over [low, low + width), in a shuffled order. */
function spread(count: number, low: number, width: number): number[] {
  const values = Array.from({ length: count }, (_, i) => low + (width * i) / count);
  // A fixed shuffle: the order must not matter to the interval.
  return values.map((_, i) => values[(i * 7919) % count]);
}

Deno.test("ratioInterval: samples without spread give the exact ratio", () => {
  assert.deepEqual(ratioInterval([21, 21, 21, 21], [20, 20, 20, 20]), [21 / 20, 21 / 20]);
});

Deno.test("ratioInterval: holds the ratio of the medians and narrows with more rounds", () => {
  // Two sides spread as a grace period spreads them here (12-34 ms).
  const narrow = (rounds: number): [number, number, number] => {
    const ours = spread(rounds, 12.5, 22);
    const reference = spread(rounds, 12, 22);
    const [low, high] = ratioInterval(ours, reference);
    return [low, median(ours) / median(reference), high];
  };
  const [low25, ratio25, high25] = narrow(25);
  const [low400, ratio400, high400] = narrow(401);
  assert.ok(low25 < ratio25 && ratio25 < high25, `${low25} ${ratio25} ${high25}`);
  assert.ok(low400 < ratio400 && ratio400 < high400, `${low400} ${ratio400} ${high400}`);
  assert.ok(high400 - low400 < (high25 - low25) / 2.5, `${high400 - low400} ${high25 - low25}`);
  // 25 rounds of this spread cannot tell a ratio of 1.02 from 1.2.
  assert.ok(high25 > 1.15, `${high25}`);
});

Deno.test("ratioInterval: the same samples give the same interval", () => {
  const ours = spread(40, 12, 22);
  const reference = spread(40, 11, 20);
  assert.deepEqual(ratioInterval(ours, reference), ratioInterval(ours, reference));
});
