/**
 * The CRIU hook's lock of a tree in its own namespace, run where the hook
 * runs it: a Deno process in the tree's namespace (here a test namespace)
 * locks the tree before the freeze, then at post-dump. No CRIU: this pins
 * what post-dump does to the lock made before (the real-CRIU suites run the
 * whole hook).
 */

import assert from "node:assert/strict";
import { createNetns, integration, must, snapshot, type TestNetns } from "./helpers/netns.ts";
import { lineReader } from "./helpers/lines.ts";
import { type Peer, startPeer, startTree, type Tree } from "./helpers/tree.ts";

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

/** A namespace (and its state before), a tree that accepts 5 connections, and a peer holding 3 of them. */
async function threeOfFive(): Promise<
  { netns: TestNetns; before: string; tree: Tree; first: Peer } & AsyncDisposable
> {
  const stack = new AsyncDisposableStack();
  const netns = stack.use(await createNetns());
  const before = await snapshot(netns);
  const at = { netns, address: "127.0.0.1" };
  const tree = stack.use(await startTree(at, PORT, 5, 1));
  const first = stack.use(await startPeer(netns, at, PORT, 3));
  return { netns, before, tree, first, [Symbol.asyncDispose]: () => stack.disposeAsync() };
}

/** A program run in the namespace (as the hook's helper runs there): its JSON lines, and lines sent to it. */
interface Program extends AsyncDisposable {
  /** The next JSON line it prints. */
  next(): Promise<unknown>;
  /** Sends it a line. */
  send(line: string): Promise<void>;
}

/** Runs `text` as a Deno program inside `netns` with `args`; disposing it checks that it ran to its end. */
async function runProgram(netns: TestNetns, text: string, args: string[]): Promise<Program> {
  const dir = await Deno.makeTempDir({ prefix: "nltest-tree-lock-" });
  await Deno.writeTextFile(`${dir}/program.ts`, text);
  const child = new Deno.Command("nsenter", {
    args: [
      `--net=${netns.path}`,
      "--",
      Deno.execPath(),
      "run",
      "-A",
      "--no-config",
      `${dir}/program.ts`,
      ...args,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  const out = child.stdout.pipeThrough(new TextDecoderStream()).values();
  return {
    next: async () => JSON.parse((await out.next()).value ?? "null"),
    send: (line) => writer.write(new TextEncoder().encode(`${line}\n`)),
    async [Symbol.asyncDispose]() {
      await writer.close().catch(() => {});
      const [status, errors] = await Promise.all([child.status, new Response(child.stderr).text()]);
      for await (const _ of out) { /* drained */ }
      await Deno.remove(dir, { recursive: true });
      assert.ok(status.success, `the program ran to its end: ${errors}`);
    },
  };
}

const MARKED_CLIENT = new URL("./helpers/marked_client.py", import.meta.url).pathname;

/**
 * Two more connections accepted by the tree after the lock made before the
 * freeze (which drops unmarked SYNs to the tree's listener: their SYNs are
 * marked, as a connection that came in before the lock would not need);
 * `stop()` closes them.
 */
async function twoMore(
  netns: TestNetns,
  tree: Tree,
): Promise<{ stop(): Promise<void> } & AsyncDisposable> {
  const held = sockets(tree.members());
  const child = new Deno.Command("nsenter", {
    args: [
      `--net=${netns.path}`,
      "--",
      "python3",
      MARKED_CLIENT,
      "127.0.0.1",
      String(PORT),
      "2",
      "0xc114",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const output = lineReader(child.stdout);
  assert.equal(await output.next(), "connected");
  for (let i = 0; i < 200 && sockets(tree.members()) < held + 2; i++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  assert.equal(sockets(tree.members()), held + 2);
  let stopped: Promise<void> | undefined;
  const stop = () =>
    stopped ??= (async () => {
      await child.stdin.close().catch(() => {});
      await child.status;
      await output.drain();
    })();
  return { stop, [Symbol.asyncDispose]: stop };
}

Deno.test({
  ...integration,
  name:
    "post-dump adds the tree's connections to the lock made before the freeze; a lock that is gone is made anew",
  async fn() {
    await using setup = await threeOfFive();
    const { netns, before, tree, first } = setup;
    const program = await runProgram(netns, PROGRAM, [String(tree.pid)]);
    const table = `NETLOCK-c${tree.pid}`;
    const nft = (...args: string[]) => must(["ip", "netns", "exec", netns.name, "nft", ...args]);
    const elements = async () =>
      (await nft("list", "set", "inet", table, "conn4"))
        .match(/127\.0\.0\.1 \. [0-9]+ \. 127\.0\.0\.1 \. [0-9]+/g)?.length ?? 0;
    const handles = async () =>
      (await nft("-a", "list", "table", "inet", table))
        .match(/(table inet \S+|chain input|chain output) \{ # handle [0-9]+/g);
    {
      await using _program = program;
      // The tree shares the test's cgroup: locked by connection (3 of them, both ends in the tree's view).
      assert.deepEqual(await program.next(), { kind: "connections" });
      assert.equal(await elements(), 3);
      const chains = await handles();
      // Connections opened after the lock (before the freeze): added, the table kept as it is.
      await using second = await twoMore(netns, tree);
      await program.send("post-dump");
      assert.deepEqual(await program.next(), { connections: 5 });
      assert.equal(await elements(), 5);
      assert.deepEqual(await handles(), chains, "the same table and chains: nothing was made anew");
      // The lock is gone (removed by hand): post-dump makes it anew.
      await nft("delete", "table", "inet", table);
      await program.send("post-dump");
      assert.deepEqual(await program.next(), { connections: 5 });
      assert.equal(await elements(), 5);
      // Unlocked before the peers stop: they wait for every echo.
      await nft("delete", "table", "inet", table);
      await second.stop();
    }
    await first.stop();
    await tree[Symbol.asyncDispose]();
    assert.equal(await snapshot(netns), before);
  },
});

/** The program for completeTreeLock: pre-dump's lock, then (after a line) the completion with what a dump would take. */
const COMPLETE_PROGRAM = `
import { completeTreeLock, lockTreeBeforeFreeze } from "${TREE_LOCK}";
import { probeTree } from "${new URL("../lib/connections/discover.ts", import.meta.url).href}";
import { nsenterExec } from "${new URL("../lib/exec/nsenter.ts", import.meta.url).href}";
const pid = Number(Deno.args[0]);
const options = { backend: Deno.args[1] } as const;
const before = await lockTreeBeforeFreeze(pid, options);
console.log(JSON.stringify({ kind: before.kind }));
const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).values();
await lines.next();
// What CRIU's images would hold: the tree's connections now.
const { connections, listeners } = await probeTree(nsenterExec([], { timeoutMs: 10_000 }), pid, {
  connections: true,
});
const after = await completeTreeLock(pid, options, before, {
  connections: connections ?? [],
  listeners: listeners ?? [],
});
console.log(JSON.stringify({ connections: after?.connections, changed: after?.changed }));
`;

for (const backend of ["iptables", "nftables"] as const) {
  Deno.test({
    ...integration,
    name:
      `${backend}: post-dump's completion adds only the connections opened since the lock made before the freeze`,
    async fn() {
      await using setup = await threeOfFive();
      const { netns, before, tree, first } = setup;
      const program = await runProgram(netns, COMPLETE_PROGRAM, [String(tree.pid), backend]);
      const name = `NETLOCK-c${tree.pid}`;
      const inNetns = (...argv: string[]) => must(["ip", "netns", "exec", netns.name, ...argv]);
      // The lock's drops (iptables: rules of its chains; nftables: set elements, a drop each way).
      const drops = async () =>
        backend === "iptables"
          ? (await inNetns("iptables-save", "-t", "filter")).split("\n")
            .filter((line) =>
              line.startsWith(`-A ${name}`) && line.endsWith("-j DROP") &&
              !line.includes("--tcp-flags") // (the listener's)
            ).length
          : 2 * ((await inNetns("nft", "list", "set", "inet", name, "conn4"))
            .match(/127\.0\.0\.1 \. [0-9]+ \. 127\.0\.0\.1 \. [0-9]+/g)?.length ?? 0);
      {
        await using _program = program;
        assert.deepEqual(await program.next(), { kind: "connections" });
        assert.equal(await drops(), 6);
        await using second = await twoMore(netns, tree);
        const rulesBefore = backend === "iptables"
          ? (await inNetns("iptables-save", "-t", "filter")).split("\n")
            .filter((line) => line.startsWith(`-A ${name}`))
          : [];
        await program.send("post-dump");
        // Completed (not made anew): the 2 new connections' drops are added.
        assert.deepEqual(await program.next(), { connections: 5, changed: true });
        assert.equal(await drops(), 10);
        if (backend === "iptables") {
          const rulesAfter = (await inNetns("iptables-save", "-t", "filter")).split("\n")
            .filter((line) => line.startsWith(`-A ${name}`));
          assert.deepEqual(rulesAfter.slice(0, rulesBefore.length), rulesBefore, "appended");
          assert.equal(rulesAfter.length, rulesBefore.length + 4);
        }
        // Unlocked before the peers stop: they wait for every echo.
        await must([
          "nsenter",
          `--net=${netns.path}`,
          "--",
          Deno.execPath(),
          "run",
          "-A",
          new URL("../cli.ts", import.meta.url).pathname,
          "unlock",
          "--mode",
          "connections",
          String(tree.pid),
        ]);
        assert.equal(await drops().catch(() => 0), 0);
        await second.stop();
      }
      await first.stop();
      await tree[Symbol.asyncDispose]();
      assert.equal(await snapshot(netns), before);
    },
  });
}
