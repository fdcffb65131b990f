/**
 * A tree on the "host" for the real-CRIU tests: a namespace made for the
 * test in which CRIU runs, and the tree (whose children hold the
 * connections) and a peer that keeps sending all along live; CRIU runs no
 * network action for such a tree, so criu-hook.sh locks it itself.
 */
import assert from "node:assert/strict";
import { createPod, criuDump, criuRestore, helpersGone, type Pod } from "./criu.ts";
import { boundQueues, cliInside, createNetns, snapshot, type TestNetns } from "./netns.ts";
import { type Cgroup, type Peer, startPeer, startTree, type Tree } from "./tree.ts";

/** Where the tree listens. */
export const PORT = 7700;
/** How many connections the peer holds. */
export const CONNECTIONS = 6;
/** How many children of the root hold them. */
export const CHILDREN = 2;

/** A live host tree: its namespace, the image directory, the namespace before, the tree, the peer (and its namespace), the tree's address. */
export type HostTree =
  & {
    host: TestNetns;
    address: string;
    images: string;
    before: string;
    tree: Tree;
    peer: Peer;
    peerNetns: TestNetns;
  }
  & AsyncDisposable;

/**
 * A host namespace with a tree (in `cgroup` when given) and a peer that is
 * sending: on loopback in the same namespace, or (`apart`) in a namespace
 * of its own across a veth pair, where the two directions of a connection
 * have different addresses and each crosses the lock once.
 */
export async function hostTree(
  cgroup?: Cgroup,
  connections = CONNECTIONS,
  imagesUnder?: string,
  apart = false,
): Promise<HostTree> {
  const pod = apart ? await createPod(createNetns) : undefined;
  const host = pod?.pod ?? await createNetns();
  const images = await Deno.makeTempDir({ prefix: "nltest-criu-", dir: imagesUnder });
  const before = await snapshot(host);
  const at = { netns: host, address: pod?.address ?? "127.0.0.1" };
  const tree = await startTree(at, PORT, connections, CHILDREN, cgroup);
  const peer = await startPeer(pod?.peer ?? host, at, PORT, connections);
  await peer.flowing();
  return {
    host,
    address: at.address,
    images,
    before,
    tree,
    peer,
    peerNetns: pod?.peer ?? host,
    async [Symbol.asyncDispose]() {
      await peer[Symbol.asyncDispose]();
      await tree[Symbol.asyncDispose]();
      await Deno.remove(images, { recursive: true });
      await (pod ?? host)[Symbol.asyncDispose]();
    },
  };
}

/** A live tree in a pod's namespace: the pod, the image directory, the namespace before, the tree, the peer. */
export type PodTree =
  & { pod: Pod; images: string; before: string; tree: Tree; peer: Peer }
  & AsyncDisposable;

/** A pod whose tree's children (listening on `port`) hold live connections to a peer that is sending. */
export async function podTree(port = PORT, pauseMs?: number): Promise<PodTree> {
  const pod = await createPod(createNetns);
  const images = await Deno.makeTempDir({ prefix: "nltest-criu-" });
  const before = await snapshot(pod.pod);
  const at = { netns: pod.pod, address: pod.address };
  const tree = await startTree(at, port, CONNECTIONS, CHILDREN);
  const peer = await startPeer(pod.peer, at, port, CONNECTIONS, pauseMs);
  await peer.flowing();
  return {
    pod,
    images,
    before,
    tree,
    peer,
    async [Symbol.asyncDispose]() {
      await peer[Symbol.asyncDispose]();
      await tree[Symbol.asyncDispose]();
      await Deno.remove(images, { recursive: true });
      await pod[Symbol.asyncDispose]();
    },
  };
}

/** A host tree dumped for good with the hook (its lock left for a restore), and gone. */
export async function dumpedHostTree(
  env: Record<string, string>,
  cgroup?: Cgroup,
): Promise<HostTree> {
  const live = await hostTree(cgroup);
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
export async function locks(netns: TestNetns): Promise<string[]> {
  const listed = await cliInside(netns, ["list", "--json"]);
  assert.equal(listed.code, 0, listed.stderr);
  return listed.stdout.split("\n").filter(Boolean).map((line) => {
    const lock = JSON.parse(line);
    return `${lock.kind} ${lock.name}`;
  });
}

/** Waits (10 s at most) until nothing of netlock's is left in the namespace. */
export async function clean(netns: TestNetns, before: string): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    if (await snapshot(netns) === before) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

/**
 * The peer's echoes stall for `ms` (400 by default) and no connection
 * breaks meanwhile: its connections are locked (silence), not reset.
 */
export async function stalled(
  peer: { progress(): number; broken(): number },
  ms = 400,
): Promise<boolean> {
  const [echoed, broken] = [peer.progress(), peer.broken()];
  await new Promise((resolve) => setTimeout(resolve, ms));
  return peer.progress() === echoed && peer.broken() === 0 && broken === 0;
}

/** The peer's verdict: every byte echoed in order, no reset, no error. */
export function assertWhole(verdict: { ok: boolean; resets: number; errors: string[] }): void {
  assert.deepEqual(
    { ok: verdict.ok, resets: verdict.resets, errors: verdict.errors },
    { ok: true, resets: 0, errors: [] },
  );
}

/**
 * Restores the dumped host tree (retrying while its PIDs are taken) and
 * checks the outcome: the peer's echoes flow again, nothing of the lock is
 * left, every byte came back in order and no connection was reset.
 */
export async function restoresWhole(
  live: HostTree | PodTree,
  env: Record<string, string>,
): Promise<void> {
  const [setting, netns] = "pod" in live
    ? [{ pod: live.pod }, live.pod.pod]
    : [{ host: live.host }, live.host];
  const restore = await criuRestore(setting, live.images, env);
  assert.equal(restore.code, 0, restore.errors);
  live.tree.restored(restore.pid);
  await live.peer.flowing();
  assert.ok(await clean(netns, live.before), "the restore removed the lock");
  assertWhole(await live.peer.stop());
}

/**
 * After a final dump of a held tree: its helper outlives CRIU and holds
 * one queue in `netns`, which `list` shows for the lock `name`.
 */
export async function assertHeldForRestore(netns: TestNetns, name: string): Promise<void> {
  const queues = await boundQueues(netns);
  assert.equal(queues.length, 1, "the helper still holds its queue");
  // `list` says so: the lock's drops queue to the helper's queue.
  const listed = await cliInside(netns, ["list", "--json"]);
  const lock = listed.stdout.split("\n").filter(Boolean).map((line) => JSON.parse(line))
    .find((found) => found.name === name);
  assert.equal(lock?.queue, queues[0], listed.stdout);
  assert.equal(await helpersGone(0), false, "the helper outlives CRIU");
}

/**
 * The restore of a tree whose dump's helper held for it: every connection
 * kept, the helper gone once it let what it held through (CRIU's dump log
 * says how many), its queue gone.
 */
export async function restoresHeldWhole(
  live: HostTree | PodTree,
  env: Record<string, string>,
): Promise<void> {
  await restoresWhole(live, env);
  assert.ok(await helpersGone(), "the helper ended once it let everything through");
  const netns = "pod" in live ? live.pod.pod : live.host;
  assert.deepEqual(await boundQueues(netns), [], "its queue went with it");
  const log = await Deno.readTextFile(`${live.images}/dump.log`);
  const released = Number(log.match(/let through ([0-9]+) held packet\(s\) at the restore/)?.[1]);
  assert.ok(released > 0, `what was held went through at the restore: ${released}`);
}
