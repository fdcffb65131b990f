/**
 * A real CRIU with `criu-hook.sh` and `NETLOCK_HOLD=1`, for a tree that
 * shares CRIU's network namespace (CRIU runs no network action for it: the
 * hook's helper locks it from pre-dump on): what the lock stops is held in
 * the kernel's queue and let through as soon as CRIU lets the tree run
 * (`--leave-running`), so that a client that connects while the tree is
 * frozen connects at once instead of at its 1 s SYN retry; after a final
 * dump the held packets are dropped (never let into a reset) and the lock
 * drops until the restore. The tree's peer is in a namespace of its own,
 * across a veth pair.
 */
import assert from "node:assert/strict";
import { criuDump, helpersGone, queuedAfter, withCriu, wrappedHook } from "./helpers/criu.ts";
import { boundQueues, timedConnect } from "./helpers/netns.ts";
import {
  assertHeldForRestore,
  assertWhole,
  clean,
  CONNECTIONS,
  hostTree,
  locks,
  PORT,
  restoresHeldWhole,
  restoresWhole,
  stalled,
} from "./helpers/host_tree.ts";

const HOLD = { NETLOCK_BACKEND: "iptables", NETLOCK_HOLD: "1" };

Deno.test({
  ...withCriu,
  name: "real CRIU, host tree, NETLOCK_HOLD=1: a --leave-running dump holds what the lock " +
    "stops and lets it through once the tree runs; nothing left",
  async fn() {
    await using live = await hostTree(undefined, CONNECTIONS, undefined, true);
    const { host, images, before, tree, peer } = live;
    await using hook = await wrappedHook({ noteQueues: true });
    const dump = await criuDump({ host, hook: hook.path }, tree, images, ["--leave-running"], HOLD);
    assert.equal(dump.code, 0, dump.errors);
    // Locked by connection (a cgroup lock cannot queue), and what it stops is queued.
    assert.match(dump.log, /its lock holds what it stops \(NETLOCK_HOLD=1\)/);
    const notes = await hook.locks();
    assert.ok(queuedAfter(notes, "post-dump") > 0, `held while frozen: ${notes.join("; ")}`);
    assert.ok(await helpersGone(), "the hook's helper ended");
    assert.ok(await clean(host, before), "nothing of the lock is left once the tree runs");
    assert.deepEqual(await boundQueues(host), [], "no queue is left");
    await peer.flowing();
    assertWhole(await peer.stop());
  },
});

for (const hold of [true, false]) {
  Deno.test({
    ...withCriu,
    name: `real CRIU, host tree, NETLOCK_HOLD=${hold ? 1 : 0}: a client that connects while ` +
      `the tree is frozen connects ${
        hold ? "within 100 ms of its resumption" : "at its SYN retry, not before"
      }`,
    async fn() {
      await using live = await hostTree(undefined, CONNECTIONS, undefined, true);
      const { host, address, images, tree, peer, peerNetns } = live;
      // Frozen 1.5 s more at post-dump: the client's SYN comes in the middle.
      await using hook = await wrappedHook({ delay: ["post-dump", 1.5] });
      const env = { ...HOLD, NETLOCK_HOLD: hold ? "1" : "0" };
      const dumping = criuDump({ host, hook: hook.path }, tree, images, ["--leave-running"], env);
      for (let i = 0; i < 200; i++) {
        if ((await hook.locks()).some((line) => line.startsWith("pre-dump"))) break;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
      const connecting = timedConnect(peerNetns, address, PORT, 6);
      const dump = await dumping;
      const ended = Date.now();
      assert.equal(dump.code, 0, dump.errors);
      const at = await connecting;
      assert.equal(typeof at, "object", `the client connected (${at})`);
      const { sent, connected } = at as { sent: number; connected: number };
      // The kernel sends a SYN again every second here (tcp_syn_linear_timeouts):
      // a connection made by a retry is made a whole number of seconds after the first SYN.
      const sinceRetry = (connected - sent) % 1_000;
      if (hold) {
        assert.ok(
          connected - ended < 100,
          `connected ${connected - ended} ms after the dump ended`,
        );
      } else {
        assert.ok(
          connected - sent >= 1_000 && sinceRetry < 100,
          `connected ${connected - sent} ms after its first SYN: at a retry`,
        );
      }
      assert.ok(await helpersGone(), "the hook's helper ended");
      assert.deepEqual(await boundQueues(host), [], "no queue is left");
      await peer.flowing();
      assertWhole(await peer.stop());
    },
  });
}

Deno.test({
  ...withCriu,
  name: "real CRIU, host tree, NETLOCK_HOLD=1: after a final dump the helper keeps holding " +
    "until the restore lets it all through; every connection kept, nothing left",
  async fn() {
    await using live = await hostTree(undefined, CONNECTIONS, undefined, true);
    const { host, images, tree, peer } = live;
    tree.members();
    const dump = await criuDump({ host }, tree, images, [], HOLD);
    assert.equal(dump.code, 0, dump.errors);
    await tree.gone();
    // The lock stays, and the helper holds what it stops: no echo, no reset.
    assert.ok((await locks(host)).includes(`connections NETLOCK-c${tree.pid}`));
    assert.ok(await stalled(peer, 500), "no echo (and no reset) while the tree is dumped");
    await assertHeldForRestore(host, `NETLOCK-c${tree.pid}`);
    await restoresHeldWhole(live, HOLD);
  },
});

Deno.test({
  ...withCriu,
  name: "real CRIU, host tree, NETLOCK_HOLD=1: a helper whose time for the restore is up " +
    "drops what it held (the lock drops); a later restore keeps every connection",
  async fn() {
    await using live = await hostTree(undefined, CONNECTIONS, undefined, true);
    const { host, images, tree, peer } = live;
    tree.members();
    const env = { ...HOLD, NETLOCK_HOLD_KEEP_MS: "1000" };
    const dump = await criuDump({ host }, tree, images, [], env);
    assert.equal(dump.code, 0, dump.errors);
    await tree.gone();
    assert.ok(await helpersGone(), "the helper ended when its time was up");
    assert.deepEqual(await boundQueues(host), [], "its queue went with it");
    assert.ok((await locks(host)).includes(`connections NETLOCK-c${tree.pid}`));
    assert.ok(await stalled(peer, 500), "no echo (and no reset) while the tree is dumped");
    await restoresWhole(live, env);
  },
});

Deno.test({
  ...withCriu,
  name: "real CRIU, host tree, nftables, NETLOCK_HOLD=1: the lock drops (nft cannot queue here) " +
    "and CRIU's log says so; every connection kept, nothing left",
  async fn() {
    await using live = await hostTree(undefined, CONNECTIONS, undefined, true);
    const { host, images, before, tree, peer } = live;
    const env = { NETLOCK_BACKEND: "nftables", NETLOCK_HOLD: "1" };
    const dump = await criuDump({ host }, tree, images, ["--leave-running"], env);
    assert.equal(dump.code, 0, dump.errors);
    assert.match(dump.log, /not holding: the nftables backend drops what it stops/);
    assert.ok(await helpersGone(), "the hook's helper ended");
    assert.ok(await clean(host, before), "nothing of the lock is left once the tree runs");
    assert.deepEqual(await boundQueues(host), [], "no queue was bound");
    await peer.flowing();
    assertWhole(await peer.stop());
  },
});
