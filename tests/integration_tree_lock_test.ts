/**
 * The CRIU hook's lock of a tree in its own namespace, run where the hook
 * runs it: a Deno process in the tree's namespace (here a test namespace)
 * locks the tree before the freeze, then at post-dump. No CRIU: this pins
 * what post-dump does to the lock made before (the real-CRIU suites run the
 * whole hook).
 */

import assert from "node:assert/strict";
import { createNetns, integration, must, snapshot } from "./helpers/netns.ts";
import { startPeer, startTree } from "./helpers/tree.ts";

const PORT = 7710;
const TREE_LOCK = new URL("../lib/criu/tree_lock.ts", import.meta.url).href;

/** The program run in the tree's namespace: pre-dump's lock, then (after a line on stdin) post-dump's. */
const PROGRAM = `
import { lockTreeBeforeFreeze, lockTreeConnections } from "${TREE_LOCK}";
const pid = Number(Deno.args[0]);
const options = { backend: "nftables" } as const;
const before = await lockTreeBeforeFreeze(pid, options);
console.log(JSON.stringify({ kind: before.kind }));
const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).values();
for (const _ of [1, 2]) {
  await lines.next();
  const after = await lockTreeConnections(pid, options, before);
  console.log(JSON.stringify({ connections: after.connections }));
}
`;

/** The sockets the processes hold. */
function sockets(pids: number[]): number {
  let count = 0;
  for (const pid of pids) {
    for (const fd of Deno.readDirSync(`/proc/${pid}/fd`)) {
      try {
        if (Deno.readLinkSync(`/proc/${pid}/fd/${fd.name}`).startsWith("socket:")) count++;
      } catch {
        // Closed meanwhile.
      }
    }
  }
  return count;
}

Deno.test({
  ...integration,
  name:
    "post-dump adds the tree's connections to the lock made before the freeze; a lock that is gone is made anew",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const at = { netns, address: "127.0.0.1" };
    // The tree accepts 5: 3 now, 2 after the first lock.
    await using tree = await startTree(at, PORT, 5, 1);
    await using first = await startPeer(netns, at, PORT, 3);
    const dir = await Deno.makeTempDir({ prefix: "nltest-tree-lock-" });
    const program = `${dir}/program.ts`;
    await Deno.writeTextFile(program, PROGRAM);
    const child = new Deno.Command("nsenter", {
      args: [
        `--net=${netns.path}`,
        "--",
        Deno.execPath(),
        "run",
        "-A",
        "--no-config",
        program,
        String(tree.pid),
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    const out = child.stdout.pipeThrough(new TextDecoderStream()).values();
    const next = async () => JSON.parse((await out.next()).value ?? "null");
    const table = `NETLOCK-c${tree.pid}`;
    const nft = (...args: string[]) => must(["ip", "netns", "exec", netns.name, "nft", ...args]);
    const elements = async () =>
      (await nft("list", "set", "inet", table, "conn4"))
        .match(/127\.0\.0\.1 \. [0-9]+ \. 127\.0\.0\.1 \. [0-9]+/g)?.length ?? 0;
    const handles = async () =>
      (await nft("-a", "list", "table", "inet", table))
        .match(/(table inet \S+|chain input|chain output) \{ # handle [0-9]+/g);
    try {
      // The tree shares the test's cgroup: locked by connection (3 of them, both ends in the tree's view).
      assert.deepEqual(await next(), { kind: "connections" });
      assert.equal(await elements(), 3);
      const chains = await handles();
      // Connections opened after the lock (before the freeze): added, the table kept as it is.
      const held = sockets(tree.members());
      await using second = await startPeer(netns, at, PORT, 2);
      // Accepted by the tree (a connection in the listen queue is not the tree's yet).
      for (let i = 0; i < 200 && sockets(tree.members()) < held + 2; i++) {
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      assert.equal(sockets(tree.members()), held + 2);
      await writer.write(new TextEncoder().encode("post-dump\n"));
      assert.deepEqual(await next(), { connections: 5 });
      assert.equal(await elements(), 5);
      assert.deepEqual(await handles(), chains, "the same table and chains: nothing was made anew");
      // The lock is gone (removed by hand): post-dump makes it anew.
      await nft("delete", "table", "inet", table);
      await writer.write(new TextEncoder().encode("post-dump\n"));
      assert.deepEqual(await next(), { connections: 5 });
      assert.equal(await elements(), 5);
      // Unlocked before the peers stop: they wait for every echo.
      await nft("delete", "table", "inet", table);
      await second.stop();
    } finally {
      await writer.close().catch(() => {});
      const status = await child.status;
      await child.stderr.cancel();
      await Deno.remove(dir, { recursive: true });
      assert.ok(status.success, "the program ran to its end");
    }
    await first.stop();
    await tree[Symbol.asyncDispose]();
    assert.equal(await snapshot(netns), before);
  },
});
