/**
 * netlock as a real CRIU's action script (`criu-hook.sh` with `--network-lock
 * skip`): a process tree in a namespace of its own, whose children hold live
 * TCP connections to a peer outside it that keeps sending all along, is
 * dumped with `--leave-running`, and dumped and restored. No connection is
 * reset, every byte comes back in order, and nothing of the lock is left in
 * the namespace — with each backend. Skipped (saying why) without a CRIU;
 * never under CI.
 */
import assert from "node:assert/strict";
import {
  criuDump,
  criuRestore,
  helpersGone,
  type Pod,
  queuedAfter,
  withCriu,
  wrappedHook,
} from "./helpers/criu.ts";
import { boundQueues, cli, snapshot } from "./helpers/netns.ts";
import {
  assertHeldForRestore,
  assertWhole,
  podTree,
  restoresHeldWhole,
  restoresWhole,
  stalled,
} from "./helpers/host_tree.ts";

const PORT = 7300;

/** The locks `netlock list` shows in the pod's namespace (kind and name). */
async function kept(pod: Pod): Promise<string[]> {
  const listed = await cli(["list", "--json", "--netns", pod.pod.name]);
  assert.equal(listed.code, 0, listed.stderr);
  return listed.stdout.split("\n").filter(Boolean).map((line) => {
    const lock = JSON.parse(line);
    return `${lock.kind} ${lock.name}`;
  });
}

for (const backend of ["iptables", "nftables"]) {
  const env = { NETLOCK_BACKEND: backend };

  Deno.test({
    ...withCriu,
    name: `real CRIU, ${backend}: dump --leave-running of a tree with live connections`,
    async fn() {
      await using live = await podTree(PORT);
      const { pod, images, before, tree, peer } = live;
      const dump = await criuDump({ pod }, tree, images, ["--leave-running"], env);
      assert.equal(dump.code, 0, dump.errors);
      assert.ok(await helpersGone(), "the hook's helper ended");
      assert.equal(await snapshot(pod.pod), before, "nothing of the lock is left");
      // The tree runs on, and its connections carry on.
      await peer.flowing();
      const verdict = await peer.stop();
      assert.deepEqual(
        { ok: verdict.ok, resets: verdict.resets, errors: verdict.errors },
        { ok: true, resets: 0, errors: [] },
      );
      assert.ok(verdict.echoed > 0);
    },
  });

  Deno.test({
    ...withCriu,
    name: `real CRIU, ${backend}: dump and restore keep every connection of the tree`,
    async fn() {
      await using live = await podTree(PORT);
      const { pod, images, before, tree, peer } = live;
      tree.members();
      const dump = await criuDump({ pod }, tree, images, [], env);
      assert.equal(dump.code, 0, dump.errors);
      await tree.gone();
      // The tree is gone; its namespace outlives it (a pod's): it stays
      // locked whole until the restore (CRIU's contract): the peer's packets
      // are dropped, not answered with a reset.
      assert.ok(await helpersGone(), "the hook's helper ended");
      assert.deepEqual(await kept(pod), ["netns NETLOCK"]);
      const during = peer.progress();
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.equal(peer.progress(), during, "no echo while the tree is dumped");

      const restore = await criuRestore({ pod }, images, env);
      assert.equal(restore.code, 0, restore.errors);
      tree.restored(restore.pid);
      await peer.flowing();
      assert.equal(await snapshot(pod.pod), before, "the restore removed the lock");
      assert.ok(await helpersGone(), "no helper is left");
      const verdict = await peer.stop();
      assert.deepEqual(
        { ok: verdict.ok, resets: verdict.resets, errors: verdict.errors },
        { ok: true, resets: 0, errors: [] },
      );
    },
  });
}

Deno.test({
  ...withCriu,
  name: "real CRIU, iptables, NETLOCK_HOLD=1: a --leave-running dump holds what the lock stops " +
    "and lets it through at network-unlock; nothing left",
  async fn() {
    await using live = await podTree(PORT);
    const { pod, images, before, tree, peer } = live;
    await using hook = await wrappedHook({ noteQueues: true });
    const env = { NETLOCK_BACKEND: "iptables", NETLOCK_HOLD: "1" };
    const dump = await criuDump({ pod, hook: hook.path }, tree, images, ["--leave-running"], env);
    assert.equal(dump.code, 0, dump.errors);
    // While the tree is frozen, the peer's segments are queued to the holder.
    const notes = await hook.locks();
    assert.ok(queuedAfter(notes, "post-dump") > 0, `held while frozen: ${notes.join("; ")}`);
    assert.ok(await helpersGone(), "the hook's helper ended");
    assert.equal(await snapshot(pod.pod), before, "nothing of the lock is left");
    assert.deepEqual(await boundQueues(pod.pod), [], "no queue is left");
    await peer.flowing();
    assertWhole(await peer.stop());
  },
});

Deno.test({
  ...withCriu,
  name: "real CRIU, iptables, NETLOCK_HOLD=1: after a final dump of a tree in a pod's namespace " +
    "the helper keeps holding until the restore lets it all through; every connection kept",
  async fn() {
    await using live = await podTree(PORT);
    const { pod, images, tree, peer } = live;
    const env = { NETLOCK_BACKEND: "iptables", NETLOCK_HOLD: "1" };
    tree.members();
    const dump = await criuDump({ pod }, tree, images, [], env);
    assert.equal(dump.code, 0, dump.errors);
    await tree.gone();
    // The pod's namespace outlives the tree (CRIU was told it is external):
    // its lock stays, and what it stops is held for the restore.
    assert.deepEqual(await kept(pod), ["netns NETLOCK"]);
    await assertHeldForRestore(pod.pod, "NETLOCK");
    assert.ok(await stalled(peer, 500), "no echo (and no reset) while the tree is dumped");
    await restoresHeldWhole(live, env);
  },
});

Deno.test({
  ...withCriu,
  name: "real CRIU, iptables, NETLOCK_HOLD=1: a pod's helper whose time for the restore is up " +
    "drops what it held (the lock drops); a later restore keeps every connection",
  async fn() {
    await using live = await podTree(PORT);
    const { pod, images, tree, peer } = live;
    const env = { NETLOCK_BACKEND: "iptables", NETLOCK_HOLD: "1", NETLOCK_HOLD_KEEP_MS: "1000" };
    tree.members();
    const dump = await criuDump({ pod }, tree, images, [], env);
    assert.equal(dump.code, 0, dump.errors);
    await tree.gone();
    assert.ok(await helpersGone(), "the helper ended when its time was up");
    assert.deepEqual(await boundQueues(pod.pod), [], "its queue went with it");
    assert.deepEqual(await kept(pod), ["netns NETLOCK"]);
    assert.ok(await stalled(peer, 500), "no echo (and no reset) while the tree is dumped");
    await restoresWhole(live, env);
  },
});
