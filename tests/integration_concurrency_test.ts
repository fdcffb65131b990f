/**
 * Concurrency: many simultaneous locks, unlocks and status reads of one
 * namespace, round after round, per backend; and locks racing unlocks on
 * many namespaces at once. Every call succeeds, and the state is exactly
 * one lock (or none) afterwards. `deno task stress` runs the full 60
 * rounds; the test suite runs STRESS_ROUNDS (default 3).
 */
import assert from "node:assert/strict";
import { getLockStatus, lockNetwork, unlockNetwork } from "../mod.ts";
import {
  cli,
  countLines,
  createNetns,
  integration,
  snapshot,
  type TestNetns,
} from "./helpers/netns.ts";

const ROUNDS = Number(Deno.env.get("STRESS_ROUNDS") ?? 3);
const CALLS = 16;

async function assertExactlyOneLock(netns: TestNetns, backend: string): Promise<void> {
  if (backend === "iptables") {
    for (const save of ["iptables-save", "ip6tables-save"]) {
      const rules = (await netns.run([save])).stdout;
      assert.equal(countLines(rules, /^-A (INPUT|OUTPUT) -j NETLOCK$/), 2, save);
      assert.equal(countLines(rules, /^-A NETLOCK /), 2, save);
    }
  } else {
    const ruleset = (await netns.run(["nft", "list", "ruleset"])).stdout;
    assert.equal(countLines(ruleset, /^table /), 1, ruleset);
  }
}

for (const backend of ["iptables", "nftables"] as const) {
  Deno.test({
    ...integration,
    name:
      `${backend}: ${CALLS} simultaneous locks, then ${CALLS} unlocks, with status reads, ${ROUNDS} rounds`,
    async fn() {
      await using netns = await createNetns();
      const before = await snapshot(netns);
      const target = { netns: netns.path };
      for (let round = 0; round < ROUNDS; round++) {
        const locks = await Promise.allSettled([
          ...Array.from({ length: CALLS }, () => lockNetwork(target, { backend })),
          ...Array.from({ length: 4 }, () => getLockStatus(target)),
        ]);
        for (const outcome of locks) {
          assert.equal(
            outcome.status,
            "fulfilled",
            String((outcome as PromiseRejectedResult).reason),
          );
        }
        await assertExactlyOneLock(netns, backend);
        assert.equal((await getLockStatus(target)).state, "locked");
        const unlocks = await Promise.allSettled([
          ...Array.from({ length: CALLS }, () => unlockNetwork(target)),
          ...Array.from({ length: 4 }, () => getLockStatus(target)),
        ]);
        for (const outcome of unlocks) {
          assert.equal(
            outcome.status,
            "fulfilled",
            String((outcome as PromiseRejectedResult).reason),
          );
        }
        assert.equal(await snapshot(netns), before, `round ${round}`);
      }
    },
  });
}

Deno.test({
  ...integration,
  name:
    "locks racing unlocks on eight namespaces at once end in a whole state, never a partial one",
  async fn() {
    const namespaces: TestNetns[] = [];
    try {
      for (let i = 0; i < 8; i++) namespaces.push(await createNetns());
      for (let round = 0; round < ROUNDS; round++) {
        const calls = namespaces.flatMap((netns, i) => {
          const target = { netns: netns.path };
          const backend = i % 2 ? "nftables" : "iptables";
          return [
            lockNetwork(target, { backend }),
            unlockNetwork(target),
            lockNetwork(target, { backend }),
            unlockNetwork(target),
            lockNetwork(target, { backend }),
          ];
        });
        const outcomes = await Promise.allSettled(calls);
        for (const outcome of outcomes) {
          assert.equal(
            outcome.status,
            "fulfilled",
            String((outcome as PromiseRejectedResult).reason),
          );
        }
        for (const netns of namespaces) {
          const state = (await getLockStatus({ netns: netns.path })).state;
          if (state === "partial") {
            const dump = [
              await netns.run(["iptables-save"]),
              await netns.run(["ip6tables-save"]),
              await netns.run(["nft", "list", "ruleset"]),
            ];
            assert.fail(`${netns.name} partial:\n${dump.map((d) => d.stdout).join("\n")}`);
          }
          await unlockNetwork({ netns: netns.path });
          assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "", netns.name);
        }
      }
    } finally {
      for (const netns of namespaces) await netns[Symbol.asyncDispose]();
    }
  },
});

Deno.test({
  ...integration,
  name: `the CLI: ${CALLS} simultaneous lock processes, then ${CALLS} unlock processes`,
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const locks = await Promise.all(
      Array.from(
        { length: CALLS },
        (_, i) =>
          i % 4 === 3
            ? cli(["status", "--netns", netns.name])
            : cli(["lock", "--netns", netns.name]),
      ),
    );
    for (const [i, result] of locks.entries()) {
      if (i % 4 !== 3) assert.equal(result.code, 0, result.stderr);
      else assert.ok(result.code === 0 || result.code === 3, result.stderr);
    }
    await assertExactlyOneLock(netns, "iptables");
    const unlocks = await Promise.all(
      Array.from({ length: CALLS }, () => cli(["unlock", "--netns", netns.name])),
    );
    for (const result of unlocks) assert.equal(result.code, 0, result.stderr);
    assert.equal(await snapshot(netns), before);
  },
});
