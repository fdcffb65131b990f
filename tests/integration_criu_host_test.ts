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
import { createPod, criuDump, criuRestore, HOOK, type Setting, withCriu } from "./helpers/criu.ts";
import { cliInside, createNetns, probe, snapshot, type TestNetns } from "./helpers/netns.ts";
import {
  type Cgroup,
  createCgroup,
  type Peer,
  startPeer,
  startTree,
  type Tree,
} from "./helpers/tree.ts";

const PORT = 7700;
const CONNECTIONS = 6;
const CHILDREN = 2;

/** A host namespace with a tree (in `cgroup` when given) and a peer that is sending. */
async function hostTree(cgroup?: Cgroup): Promise<
  { host: TestNetns; images: string; before: string; tree: Tree; peer: Peer } & AsyncDisposable
> {
  const host = await createNetns();
  const images = await Deno.makeTempDir({ prefix: "nltest-criu-" });
  const before = await snapshot(host);
  const at = { netns: host, address: "127.0.0.1" };
  const tree = await startTree(at, PORT, CONNECTIONS, CHILDREN, cgroup);
  const peer = await startPeer(host, at, PORT, CONNECTIONS);
  await peer.flowing();
  return {
    host,
    images,
    before,
    tree,
    peer,
    async [Symbol.asyncDispose]() {
      await peer[Symbol.asyncDispose]();
      await tree[Symbol.asyncDispose]();
      await Deno.remove(images, { recursive: true });
      await host[Symbol.asyncDispose]();
    },
  };
}

/** A host tree dumped for good with the hook (its lock left for a restore), and gone. */
async function dumpedHostTree(
  env: Record<string, string>,
): Promise<Awaited<ReturnType<typeof hostTree>>> {
  const live = await hostTree();
  try {
    live.tree.members();
    const dump = await criuDump({ host: live.host }, live.tree, live.images, [], env);
    assert.equal(dump.code, 0, dump.errors);
    await live.tree.gone();
    return live;
  } catch (error) {
    await live[Symbol.asyncDispose]();
    throw error;
  }
}

/** The locks netlock holds in the namespace, as `netlock list` shows them (kind and name). */
async function locks(netns: TestNetns): Promise<string[]> {
  const listed = await cliInside(netns, ["list", "--json"]);
  assert.equal(listed.code, 0, listed.stderr);
  return listed.stdout.split("\n").filter(Boolean).map((line) => {
    const lock = JSON.parse(line);
    return `${lock.kind} ${lock.name}`;
  });
}

/** Waits (10 s at most) until nothing of netlock's is left in the namespace. */
async function clean(netns: TestNetns, before: string): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    if (await snapshot(netns) === before) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

function assertWhole(verdict: { ok: boolean; resets: number; errors: string[] }): void {
  assert.deepEqual(
    { ok: verdict.ok, resets: verdict.resets, errors: verdict.errors },
    { ok: true, resets: 0, errors: [] },
  );
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
        // A shared cgroup: the hook takes the connection path and says so in CRIU's log.
        const said = dump.log.split("\n").filter((line) => line.startsWith("warning: criu-hook:"));
        assert.deepEqual(
          said.map((line) => /locked by address from pre-dump on/.test(line)),
          own ? [] : [true],
          said.join("\n"),
        );
        // Locked from pre-dump (by cgroup, or by connection) to post-dump (by connection too).
        const first = own ? `NETLOCK-g${tree.pid}` : `NETLOCK-c${tree.pid}`;
        assert.deepEqual(await hook.locks(), [
          `pre-dump ${first}`,
          `post-dump ${
            [first, `NETLOCK-c${tree.pid}`].sort().filter((n, i, a) => a.indexOf(n) === i).join(" ")
          }`,
        ]);
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
        const { host, images, before, tree, peer } = live;
        tree.members();
        const dump = await criuDump({ host }, tree, images, [], env);
        assert.equal(dump.code, 0, dump.errors);
        await tree.gone();
        // The tree is gone: its connections stay locked by address for the restore.
        const held = await locks(host);
        assert.ok(held.includes(`connections NETLOCK-c${tree.pid}`), held.join());
        const during = peer.progress();
        await new Promise((resolve) => setTimeout(resolve, 500));
        assert.equal(peer.progress(), during, "no echo while the tree is dumped");

        const restore = await criuRestore({ host }, images, env);
        assert.equal(restore.code, 0, restore.errors);
        tree.restored(restore.pid);
        await peer.flowing();
        assert.ok(await clean(host, before), "the restore removed the lock");
        assertWhole(await peer.stop());
      },
    });
  }
}

/**
 * An action script that runs criu-hook.sh (as a wrapper would: criu-hook.sh
 * finds CRIU by its image directory), then, after each action, notes which
 * of netlock's locks are in the tree's namespace (`locks()` reads the
 * notes: `ACTION NAME...`), and with `killAt` kills CRIU with SIGKILL once
 * that action is done, before CRIU goes on.
 */
async function wrappedHook(
  killAt?: string,
): Promise<{ path: string; locks(): Promise<string[]> } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "nltest-hook-" });
  const path = `${dir}/hook.sh`;
  const notes = `${dir}/locks`;
  // The tree's namespace: CRIU's own, or (a pod) its root's.
  const inTree =
    'if [ -n "$CRTOOLS_INIT_PID" ]; then nsenter --target "$CRTOOLS_INIT_PID" --net -- "$@"; ' +
    'else "$@"; fi';
  await Deno.writeTextFile(
    path,
    `#!/bin/sh\n${HOOK}\nrc=$?\nin_tree() { ${inTree}; }\n` +
      `names=$( { in_tree nft list ruleset; in_tree iptables-save; } 2>/dev/null | ` +
      `grep -oE 'NETLOCK(-[cg][0-9]+)?( |$)' | tr -d ' ' | sort -u | tr '\\n' ' ')\n` +
      `echo "$CRTOOLS_SCRIPT_ACTION $names" >>${notes}\n` +
      (killAt
        ? `if [ "$CRTOOLS_SCRIPT_ACTION" = ${killAt} ]; then\n` +
          `  criu=\${CRTOOLS_IMAGE_DIR#/proc/}; kill -KILL \${criu%%/*}\nfi\n`
        : "") +
      "exit $rc\n",
    { mode: 0o755 },
  );
  return {
    path,
    locks: async () =>
      (await Deno.readTextFile(notes).catch(() => "")).trim().split("\n").map((line) =>
        line.trim()
      ),
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
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
        await using hook = await wrappedHook(at);
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
        await using pod = await createPod(createNetns);
        const images = await Deno.makeTempDir({ prefix: "nltest-criu-" });
        try {
          const before = await snapshot(pod.pod);
          const place = { netns: pod.pod, address: pod.address };
          await using tree = await startTree(place, PORT, CONNECTIONS, CHILDREN);
          await using peer = await startPeer(pod.peer, place, PORT, CONNECTIONS);
          await peer.flowing();
          await using hook = await wrappedHook(at);
          const setting: Setting = { pod, hook: hook.path };
          const dump = await criuDump(setting, tree, images, ["--leave-running"], env);
          assert.notEqual(dump.code, 0, "CRIU was killed");
          assert.match((await hook.locks()).at(-1)!, new RegExp(`^${at} NETLOCK`), "locked then");
          assert.ok(await clean(pod.pod, before), "the namespace of the tree that runs on is free");
          await runsOn(tree, peer, at);
        } finally {
          await Deno.remove(images, { recursive: true });
        }
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
      const during = peer.progress();
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(peer.progress(), during, "the peers still get no answer (and no reset)");
      const unlocked = await cliInside(host, ["unlock", "--all"]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.equal(await snapshot(host), before, "nothing of the lock is left");
    },
  });

  // CRIU_FAULT=6 (FI_POST_RESTORE): the restore fails after the tree is
  // restored, before post-restore and the unlock.
  const failing = { ...env, CRIU_FAULT: "6" };

  Deno.test({
    ...withCriu,
    name: `real CRIU, a restore that fails leaves no lock in the pod's namespace, ${backend}`,
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
        assert.notEqual(await snapshot(pod.pod), before, "locked for the restore");
        const restore = await criuRestore({ pod }, images, failing);
        assert.notEqual(restore.code, 0, "the restore failed");
        assert.ok(await clean(pod.pod, before), "the dump's lock went with the failed restore");
        // A fallback in the namespace that outlived the restore is reachable.
        await using _fallback = await startTree(place, PORT, 0, 0);
        assert.equal(await probe(pod.peer, pod.address, PORT), "ok", "the fallback answers");
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
      await using hook = await wrappedHook("post-restore");
      const restore = await criuRestore({ host, hook: hook.path }, images, env);
      assert.notEqual(restore.code, 0, "CRIU was killed");
      tree.restored(tree.pid);
      assert.deepEqual((await hook.locks()).at(-1), `post-restore NETLOCK-c${tree.pid}`);
      assert.ok(await clean(host, before), "nothing of the lock is left");
    },
  });

  Deno.test({
    ...withCriu,
    name: `real CRIU, a restore that fails leaves no lock on the host, ${backend}`,
    async fn() {
      await using live = await dumpedHostTree(env);
      const { host, images, before } = live;
      assert.notEqual(await snapshot(host), before, "locked for the restore");
      const restore = await criuRestore({ host }, images, failing);
      assert.notEqual(restore.code, 0, "the restore failed");
      assert.ok(await clean(host, before), "the dump's lock went with the failed restore");
    },
  });
}
