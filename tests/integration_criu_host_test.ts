/**
 * A real CRIU with `criu-hook.sh`, for a tree that shares CRIU's network
 * namespace (a service on the host, a host-network container), for which
 * CRIU runs no network-lock or network-unlock action: CRIU runs inside a
 * namespace made for the test (the "host"), where the tree, whose children
 * hold the connections, and a peer that keeps sending all along live. In a
 * cgroup of its own and in a shared one: no connection reset, every byte in
 * order, nothing left. And faults: CRIU killed (SIGKILL) right after an
 * action leaves no lock on a tree that runs on, with a tree in CRIU's
 * namespace or in a namespace of its own; a restore that fails leaves no
 * lock in a namespace that outlives it.
 */
import assert from "node:assert/strict";
import {
  createPod,
  criuDump,
  criuRestore,
  type Setting,
  withCriu,
  wrappedHook,
} from "./helpers/criu.ts";
import {
  cliInside,
  createNetns,
  probe,
  snapshot,
  snmpCounters,
  type TestNetns,
  waitingClient,
} from "./helpers/netns.ts";
import { createCgroup, type Peer, startPeer, startTree, type Tree } from "./helpers/tree.ts";
import {
  assertWhole,
  CHILDREN,
  clean,
  CONNECTIONS,
  dumpedHostTree,
  type HostTree,
  hostTree,
  locks,
  podTree,
  PORT,
  restoresWhole,
  stalled,
} from "./helpers/host_tree.ts";

const SEGMENT = new URL("./helpers/tcp_segment.py", import.meta.url).pathname;

/** The TCP segments a namespace's stack received so far (`Tcp: InSegs`). */
async function tcpInSegs(netns: TestNetns): Promise<number> {
  return (await snmpCounters(netns, "Tcp")).InSegs;
}

/** Waits (10 s at most) until `read` gives `expected` (the hook's helper works after CRIU). */
async function settled(read: () => Promise<string[]>, expected: string[]): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    if (JSON.stringify(await read()) === JSON.stringify(expected)) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

/** Dumps the live tree for good: the dump succeeds, the tree is gone, its connections stay locked by address. */
async function dumpedForGood(live: HostTree, env: Record<string, string>): Promise<void> {
  const { host, images, tree } = live;
  tree.members();
  const dump = await criuDump({ host }, tree, images, [], env);
  assert.equal(dump.code, 0, dump.errors);
  await tree.gone();
  const held = await locks(host);
  assert.ok(held.includes(`connections NETLOCK-c${tree.pid}`), held.join());
}

for (const backend of ["iptables", "nftables"]) {
  const env = { NETLOCK_BACKEND: backend };
  for (const own of [true, false]) {
    const where = own ? "a cgroup of its own" : "a shared cgroup";

    Deno.test({
      ...withCriu,
      name: `real CRIU, host tree in ${where}, ${backend}: dump --leave-running`,
      async fn() {
        await using cgroup = own ? await createCgroup() : undefined;
        await using live = await hostTree(cgroup);
        const { host, images, before, tree, peer } = live;
        await using hook = await wrappedHook();
        const dump = await criuDump(
          { host, hook: hook.path },
          tree,
          images,
          ["--leave-running"],
          env,
        );
        assert.equal(dump.code, 0, dump.errors);
        // A shared cgroup: the hook takes the connection path and says so in CRIU's log; and
        // after post-dump, what a final dump would keep (the dumped connections) and how.
        const said = dump.log.split("\n").filter((line) => line.startsWith("warning: criu-hook:"));
        assert.deepEqual(
          said.map((line) =>
            /locked by address from pre-dump on/.test(line)
              ? "connection path"
              : /the 6 dumped connections of process [0-9]+ stay locked .*netlock unlock/.test(line)
              ? "kept"
              : line
          ),
          own ? ["kept"] : ["connection path", "kept"],
          said.join("\n"),
        );
        // Locked from pre-dump (by cgroup and by connection, or by connection) to post-dump by
        // connection (the cgroup lock goes once post-dump answered: maybe already gone).
        const first = own ? `NETLOCK-c${tree.pid} NETLOCK-g${tree.pid}` : `NETLOCK-c${tree.pid}`;
        const [preDump, postDump, ...more] = await hook.locks();
        assert.deepEqual([preDump, more], [`pre-dump ${first}`, []]);
        assert.match(
          postDump,
          new RegExp(`^post-dump (NETLOCK-c${tree.pid})( NETLOCK-g${tree.pid})?$`),
        );
        assert.ok(await clean(host, before), "nothing of the lock is left once the tree runs");
        await peer.flowing();
        assertWhole(await peer.stop());
      },
    });

    Deno.test({
      ...withCriu,
      name: `real CRIU, host tree in ${where}, ${backend}: dump and restore keep every connection`,
      async fn() {
        await using cgroup = own ? await createCgroup() : undefined;
        await using live = await hostTree(cgroup);
        const { peer } = live;
        await dumpedForGood(live, env);
        assert.ok(await stalled(peer, 500), "no echo (and no reset) while the tree is dumped");

        await restoresWhole(live, env);
      },
    });
  }

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, host tree with its peer in another namespace, ${backend}: dump and restore keep every connection`,
    async fn() {
      // Each direction of a connection crosses the lock once, with its own
      // addresses (not loopback's, where both are 127.0.0.1): a lock that
      // matched a direction by the wrong addresses lets the peer through.
      await using live = await hostTree(undefined, CONNECTIONS, undefined, true);
      const { host, peerNetns } = live;
      // One dumped connection: the tree's address and port, the peer's.
      const ss = await host.run(["ss", "-tnH", "state", "established"]);
      const [local, remote] = ss.stdout.trim().split("\n")[0].trim().split(/\s+/).slice(-2);
      await dumpedForGood(live, env);
      assert.ok(await stalled(live.peer, 500), "no echo (and no reset) while the tree is dumped");
      // A segment of that connection, sent by the peer's side and by the
      // host's (the peer's own retransmissions back off for seconds): each
      // is dropped where it enters the lock, and never reaches the other TCP.
      const [address, port] = [local.slice(0, local.lastIndexOf(":")), local.split(":").at(-1)!];
      const [peerAddress, peerPort] = [
        remote.slice(0, remote.lastIndexOf(":")),
        remote.split(":").at(-1)!,
      ];
      const segment = (from: TestNetns, ...tuple: string[]) =>
        from.run(["python3", SEGMENT, ...tuple]);
      const received = await tcpInSegs(host);
      const incoming = await segment(peerNetns, peerAddress, peerPort, address, port);
      assert.equal(incoming.stdout.trim(), "sent", incoming.stderr);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(await tcpInSegs(host), received, "the peer's segments are dropped on input");
      const reached = await tcpInSegs(peerNetns);
      const outgoing = await segment(host, address, port, peerAddress, peerPort);
      assert.equal(outgoing.stdout.trim(), "dropped", outgoing.stderr);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(
        await tcpInSegs(peerNetns),
        reached,
        "the host's segments are dropped on output",
      );
      await restoresWhole(live, env);
    },
  });
}

// Images in /dev/shm (memory, as a migration keeps them): Deno asks for
// every permission for a path under /dev (denoland/deno#30979), whatever
// --allow-read and --allow-write say; the helper that reads and writes them
// must still keep the tree locked, and the restore must unlock it.
for (const backend of ["iptables", "nftables"]) {
  Deno.test({
    ...withCriu,
    name:
      `real CRIU, host tree, ${backend}: images in /dev/shm, dump and restore keep every connection`,
    async fn() {
      const env = { NETLOCK_BACKEND: backend };
      await using live = await hostTree(undefined, CONNECTIONS, "/dev/shm");
      await dumpedForGood(live, env);
      await restoresWhole(live, env);
    },
  });
}

/**
 * The tree runs on after CRIU died; before the dump, its connections too.
 * (After post-dump, CRIU leaves them in TCP repair mode, which it never
 * turned off: no lock of netlock's is in their way, but they are stuck.)
 */
async function runsOn(tree: Tree, peer: Peer, at: string): Promise<void> {
  const members = tree.members();
  assert.ok(members.length > CHILDREN, `the tree runs on: ${members}`);
  if (at === "post-dump") return;
  await peer.flowing();
  assertWhole(await peer.stop());
}

for (const backend of ["iptables", "nftables"]) {
  const env = { NETLOCK_BACKEND: backend };

  for (const at of ["pre-dump", "post-dump"]) {
    Deno.test({
      ...withCriu,
      name: `real CRIU killed right after ${at}, host tree, ${backend}: no lock stays`,
      async fn() {
        await using cgroup = await createCgroup();
        await using live = await hostTree(cgroup);
        const { host, images, before, tree, peer } = live;
        await using hook = await wrappedHook({ killAt: at });
        const dump = await criuDump(
          { host, hook: hook.path },
          tree,
          images,
          ["--leave-running"],
          env,
        );
        assert.notEqual(dump.code, 0, "CRIU was killed");
        assert.match((await hook.locks()).at(-1)!, new RegExp(`^${at} NETLOCK`), "locked then");
        assert.ok(await clean(host, before), "the helper unlocked the tree that runs on");
        await runsOn(tree, peer, at);
      },
    });
  }

  for (const at of ["network-lock", "post-dump"]) {
    Deno.test({
      ...withCriu,
      name:
        `real CRIU killed right after ${at}, tree in its own namespace, ${backend}: no lock stays`,
      async fn() {
        await using live = await podTree();
        const { pod, images, before, tree, peer } = live;
        await using hook = await wrappedHook({ killAt: at });
        const setting: Setting = { pod, hook: hook.path };
        const dump = await criuDump(setting, tree, images, ["--leave-running"], env);
        assert.notEqual(dump.code, 0, "CRIU was killed");
        assert.match((await hook.locks()).at(-1)!, new RegExp(`^${at} NETLOCK`), "locked then");
        assert.ok(await clean(pod.pod, before), "the namespace of the tree that runs on is free");
        await runsOn(tree, peer, at);
      },
    });
  }

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, host tree restored elsewhere, ${backend}: list shows the lock, unlock --all removes it`,
    async fn() {
      await using live = await dumpedHostTree(env);
      const { host, before, tree, peer } = live;
      // No restore here (it happens on another machine): the lock stays, and says whose it was.
      const listed = await cliInside(host, ["list", "--json"]);
      assert.equal(listed.code, 0, listed.stderr);
      const held = listed.stdout.trim().split("\n").map((line) => JSON.parse(line));
      assert.deepEqual(
        held.map((lock) => [lock.kind, lock.name, lock.backend, lock.pid, lock.alive]),
        [["connections", `NETLOCK-c${tree.pid}`, backend, tree.pid, false]],
      );
      assert.ok(await stalled(peer, 300), "the peers still get no answer (and no reset)");
      const unlocked = await cliInside(host, ["unlock", "--all"]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.equal(await snapshot(host), before, "nothing of the lock is left");
    },
  });

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, host tree, ${backend}: a client of the dumped listener waits, and connects to the restored service`,
    async fn() {
      await using live = await dumpedHostTree(env);
      const { host, tree } = live;
      // Its SYN is dropped, not answered with a reset ("connection refused").
      const client = waitingClient(host, "127.0.0.1", PORT);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      assert.ok(client.pending(), `the client waits: ${client.pending() || await client.result}`);
      assert.deepEqual(await locks(host), [`connections NETLOCK-c${tree.pid}`]);
      // `list` shows what it holds: the tree's connections and its listener.
      const listed = JSON.parse((await cliInside(host, ["list", "--json"])).stdout);
      assert.deepEqual([listed.connections, listed.listeners], [CONNECTIONS, 1]);
      await restoresWhole(live, env);
      assert.equal(await client.result, "open", "the client connects to the restored service");
    },
  });

  // CRIU_FAULT=6 (FI_POST_RESTORE): the restore fails after the tree is
  // restored, before post-restore and the unlock.
  const failing = { ...env, CRIU_FAULT: "6" };

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, pod namespace, ${backend}: locked whole after a final dump; a failed restore narrows it to the dumped connections and listener (a client waits); the retry restores them all`,
    async fn() {
      await using pod = await createPod(createNetns);
      const images = await Deno.makeTempDir({ prefix: "nltest-criu-" });
      try {
        const before = await snapshot(pod.pod);
        const place = { netns: pod.pod, address: pod.address };
        const tree = await startTree(place, PORT, CONNECTIONS, CHILDREN);
        await using peer = await startPeer(pod.peer, place, PORT, CONNECTIONS);
        await peer.flowing();
        tree.members();
        const dump = await criuDump({ pod }, tree, images, [], env);
        assert.equal(dump.code, 0, dump.errors);
        await tree.gone();
        // Between the dump and its restore the namespace is the tree's: it
        // stays locked whole (CRIU's contract, zdtm's netns_lock tests).
        const whole = ["netns NETLOCK"];
        assert.ok(await settled(() => locks(pod.pod), whole), "the namespace stays locked");
        assert.equal(await probe(pod.peer, pod.address, PORT + 10, 700), "timeout", "locked whole");
        const restore = await criuRestore({ pod }, images, failing);
        assert.notEqual(restore.code, 0, "the restore failed");
        // A failed restore narrows it to what the dump took (CRIU #2828).
        const narrowed = [`connections NETLOCK-c${tree.pid}`];
        assert.ok(await settled(() => locks(pod.pod), narrowed), "narrowed to what the dump took");
        assert.ok(await stalled(peer), "no echo (and no reset) for the dumped connections");
        // A fallback in the namespace that outlived the restore is reachable.
        {
          await using _fallback = await startTree(place, PORT + 10, 0, 0);
          assert.equal(await probe(pod.peer, pod.address, PORT + 10), "ok", "the fallback answers");
        }
        // A client of the dumped listener waits (its SYN dropped, not refused).
        const client = waitingClient(pod.peer, pod.address, PORT);
        await new Promise((resolve) => setTimeout(resolve, 1500));
        assert.ok(client.pending(), `the client waits: ${client.pending() || await client.result}`);
        const retried = await criuRestore({ pod }, images, env);
        assert.equal(retried.code, 0, retried.errors);
        await using _restored = { [Symbol.asyncDispose]: () => tree[Symbol.asyncDispose]() };
        tree.restored(retried.pid);
        await peer.flowing();
        assert.equal(await client.result, "open", "the client connects to the restored service");
        assert.ok(await clean(pod.pod, before), "the restore removed the lock");
        assertWhole(await peer.stop());
      } finally {
        await Deno.remove(images, { recursive: true });
      }
    },
  });

  Deno.test({
    ...withCriu,
    name: `real CRIU killed right after post-restore, host tree, ${backend}: the opened lock goes`,
    async fn() {
      await using live = await dumpedHostTree(env);
      const { host, images, before, tree } = live;
      // post-restore opened the lock and left its removal to post-resume,
      // which never comes: the restore's watcher removes it.
      await using hook = await wrappedHook({ killAt: "post-restore" });
      const restore = await criuRestore({ host, hook: hook.path }, images, env);
      assert.notEqual(restore.code, 0, "CRIU was killed");
      tree.restored(tree.pid);
      assert.deepEqual((await hook.locks()).at(-1), `post-restore NETLOCK-c${tree.pid}`);
      assert.ok(await clean(host, before), "nothing of the lock is left");
    },
  });
}
