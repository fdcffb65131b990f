/**
 * Connection mode at scale: lock and unlock a process holding N TCP
 * connections (100, 1,000, 10,000 by default), per backend, next to CRIU's
 * way — one `iptables` process per rule — timed in the same run (for large
 * N, on a sample of rules and extrapolated; the output says so). Runs as
 * root in a namespace it creates and deletes:
 *
 *   deno run --allow-all bench/connections.ts [N...]
 */
import { lockNetwork, unlockNetwork } from "../mod.ts";
import { connectionIptablesBody, connectionLockName } from "../lib/connections/ruleset.ts";
import { discoverConnections } from "../lib/connections/discover.ts";
import { nsenterExec } from "../lib/nsenter.ts";
import { createNetns, must, startEndpoint } from "../tests/helpers/netns.ts";

const counts = Deno.args.length ? Deno.args.map(Number) : [100, 1000, 10000];
const ROUNDS = 3;
const LOOP_SAMPLE = 100; // rules timed one process each; more are extrapolated

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

const rows: string[][] = [];
for (const n of counts) {
  await using netns = await createNetns();
  await using _server = await startEndpoint(netns, ["server", "127.0.0.1:7100"]);
  await using client = await startEndpoint(netns, ["client", "127.0.0.1", "7100", String(n)]);
  for (const backend of ["iptables", "nftables"] as const) {
    const lock: number[] = [];
    const unlock: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      let locked = 0;
      lock.push(
        await time(async () => {
          locked = (await lockNetwork(client.pid, { mode: "connections", backend })).connections;
        }),
      );
      if (locked !== n) throw new Error(`locked ${locked} connections, expected ${n}`);
      unlock.push(await time(() => unlockNetwork(client.pid, { mode: "connections" })));
    }
    rows.push([backend, String(n), median(lock).toFixed(0), median(unlock).toFixed(0)]);
  }
  // CRIU's way: `sh -c "iptables -w -t filter -A ..."` per rule, then `-D` per rule.
  const connections = await discoverConnections(
    nsenterExec([`--net=${netns.path}`], { timeoutMs: 60_000 }),
    client.pid,
  );
  const chain = connectionLockName("BENCH", client.pid);
  const specs = connectionIptablesBody(connections, "ipv4", 0xC114).slice(0, LOOP_SAMPLE);
  const ns = ["nsenter", `--net=${netns.path}`, "--"];
  await must([...ns, "iptables", "-N", chain]);
  const add = await time(async () => {
    for (const spec of specs) {
      await must([...ns, "sh", "-c", `iptables -w -t filter -A ${chain} ${spec}`]);
    }
  });
  const del = await time(async () => {
    for (const spec of specs) {
      await must([...ns, "sh", "-c", `iptables -w -t filter -D ${chain} ${spec}`]);
    }
  });
  await must([...ns, "iptables", "-X", chain]);
  const factor = (2 * n) / specs.length;
  const note = factor > 1 ? ` (${specs.length} rules timed, x${factor} extrapolated)` : "";
  rows.push([
    "iptables per rule",
    String(n),
    (add * factor).toFixed(0) + note,
    (del * factor).toFixed(0),
  ]);
}

console.log(`connection mode, medians of ${ROUNDS} rounds, milliseconds (discovery included)`);
console.log("backend            connections   lock            unlock");
for (const [backend, n, lock, unlock] of rows) {
  console.log(`${backend.padEnd(18)} ${n.padStart(11)}   ${lock.padEnd(15)} ${unlock}`);
}
