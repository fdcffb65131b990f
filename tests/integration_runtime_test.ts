/**
 * netlock as the network lock of a container runtime's checkpoint: Debian's
 * runc, pointed at `criu-netlock` (`runc --criu`), checkpoints and restores
 * a busybox container whose echo server holds live connections to a peer
 * that sends on every one all along, over a veth pair. runc drives CRIU
 * through its RPC (`criu swrk`); NETLOCK_BACKEND reaches the hook through
 * runc's environment. No connection broken, the container's namespace
 * locked between checkpoint and restore, nothing left. The control: CRIU's
 * lock skipped and no hook, and the connections break.
 */
import assert from "node:assert/strict";
import { createPod, type Pod } from "./helpers/criu.ts";
import {
  boundQueues,
  cli,
  createNetns,
  snapshot,
  snmpCounters,
  type TestNetns,
} from "./helpers/netns.ts";
import {
  type Container,
  criuWithoutLock,
  startContainer,
  startPodmanContainer,
  withPodman,
  withRunc,
} from "./helpers/runc.ts";
import { type Peer, startPeer } from "./helpers/tree.ts";
import { assertWhole, clean, stalled } from "./helpers/host_tree.ts";

const PORT = 7800;
const CONNECTIONS = 8;

/** The locks `netlock list` shows in a namespace: kind, name and backend. */
async function locksIn(
  netns: TestNetns,
): Promise<{ kind: string; name: string; backend: string }[]> {
  const listed = await cli(["list", "--json", "--netns", netns.path]);
  assert.equal(listed.code, 0, listed.stderr);
  return listed.stdout.split("\n").filter(Boolean).map((line) => JSON.parse(line));
}

/**
 * Packets the namespace's IP layer received but did not deliver so far
 * (`Ip: InReceives` less `InDelivers`): what its INPUT hook dropped (a lock).
 */
async function undelivered(netns: TestNetns): Promise<number> {
  const ip = await snmpCounters(netns, "Ip");
  return ip.InReceives - ip.InDelivers;
}

/**
 * A checkpoint locked the namespace when at least this many of the peer's
 * packets went undelivered meanwhile: its 8 connections send every 20 ms,
 * and a lock dropped 29-38 here; without one, 0 or 1 (a stray packet).
 */
const LOCKED = 10;

/** A runtime's command: its exit code and what it said. */
type Ran = { code: number; stderr: string };

/**
 * Checkpoint, then restore: in between the namespace `netns` holds a lock
 * and the peer gets no echo (and no reset); after, the echoes flow, nothing
 * of the lock is left, and every byte came back in order.
 */
async function keepsEveryConnection(
  netns: TestNetns,
  before: string,
  peer: Peer,
  backend: string,
  checkpoint: () => Promise<Ran>,
  restore: () => Promise<Ran>,
  between?: () => Promise<void>,
): Promise<void> {
  const checkpointed = await checkpoint();
  assert.equal(checkpointed.code, 0, checkpointed.stderr);
  const held = await locksIn(netns);
  assert.notDeepEqual(held, [], "locked between checkpoint and restore");
  // NETLOCK_BACKEND reached the hook through the runtime and CRIU.
  assert.deepEqual(held.map((lock) => lock.backend), held.map(() => backend), JSON.stringify(held));
  assert.ok(await stalled(peer), "no echo while checkpointed");
  await between?.();
  const restored = await restore();
  assert.equal(restored.code, 0, restored.stderr);
  await peer.flowing();
  assert.ok(await clean(netns, before), `nothing of the lock is left: ${await snapshot(netns)}`);
  assertWhole(await peer.stop());
}

/** A pod's namespace (and its state before), a runc container in it, and a peer sending to it. */
async function podContainer(): Promise<
  { pod: Pod; before: string; container: Container; peer: Peer } & AsyncDisposable
> {
  const stack = new AsyncDisposableStack();
  const pod = stack.use(await createPod(createNetns));
  const before = await snapshot(pod.pod);
  const container = stack.use(await startContainer(pod.peer, PORT, pod.pod.path));
  const at = { netns: pod.pod, address: pod.address };
  const peer = stack.use(await startPeer(pod.peer, at, PORT, CONNECTIONS));
  await peer.flowing();
  return { pod, before, container, peer, [Symbol.asyncDispose]: () => stack.disposeAsync() };
}

/** A namespace standing for the host (and its state before), a runc container on its network, and a peer sending to it. */
async function hostContainer(): Promise<
  { host: TestNetns; before: string; container: Container; peer: Peer } & AsyncDisposable
> {
  const stack = new AsyncDisposableStack();
  const host = stack.use(await createNetns());
  const before = await snapshot(host);
  const container = stack.use(await startContainer(host, PORT));
  const peer = stack.use(await startPeer(host, { netns: host, address: "127.0.0.1" }, PORT, 8));
  await peer.flowing();
  return { host, before, container, peer, [Symbol.asyncDispose]: () => stack.disposeAsync() };
}

for (const backend of ["iptables", "nftables"]) {
  const env = { NETLOCK_BACKEND: backend };

  Deno.test({
    ...withRunc,
    name:
      `runc --criu criu-netlock, ${backend}: checkpoint --tcp-established and restore keep every connection of a container in a pre-made namespace`,
    async fn() {
      await using setup = await podContainer();
      const { pod, before, container, peer } = setup;
      await keepsEveryConnection(
        pod.pod,
        before,
        peer,
        backend,
        () => container.checkpoint([], env),
        () => container.restore(env),
      );
    },
  });

  Deno.test({
    ...withRunc,
    name:
      `runc --criu criu-netlock, ${backend}: checkpoint --leave-running keeps every connection and leaves nothing`,
    async fn() {
      await using setup = await podContainer();
      const { pod, before, container, peer } = setup;
      const dropped = await undelivered(pod.pod);
      const checkpoint = await container.checkpoint(["--leave-running"], env);
      assert.equal(checkpoint.code, 0, checkpoint.stderr);
      // The peer sends all along: the lock dropped some of it during the checkpoint.
      const during = await undelivered(pod.pod) - dropped;
      assert.ok(during >= LOCKED, `the checkpoint locked the namespace (${during} dropped)`);
      await peer.flowing();
      assert.ok(await clean(pod.pod, before), "nothing of the lock is left");
      assertWhole(await peer.stop());
    },
  });

  Deno.test({
    ...withRunc,
    name:
      `runc --criu criu-netlock, ${backend}: a container on the host's network keeps every connection across checkpoint and restore`,
    async fn() {
      await using setup = await hostContainer();
      const { host, before, container, peer } = setup;
      await keepsEveryConnection(
        host,
        before,
        peer,
        backend,
        () => container.checkpoint([], env),
        () => container.restore(env),
      );
    },
  });

  Deno.test({
    ...withPodman,
    name:
      `podman with criu-netlock installed as criu, ${backend}: container checkpoint and restore --tcp-established keep every connection`,
    async fn() {
      await using pod = await createPod(createNetns);
      const before = await snapshot(pod.pod);
      await using container = await startPodmanContainer(pod.pod.path, PORT, env);
      const at = { netns: pod.pod, address: pod.address };
      await using peer = await startPeer(pod.peer, at, PORT, CONNECTIONS);
      await peer.flowing();
      const verb = (name: string) => () =>
        container.podman(["container", name, "--tcp-established", container.name], env);
      await keepsEveryConnection(
        pod.pod,
        before,
        peer,
        backend,
        verb("checkpoint"),
        verb("restore"),
      );
    },
  });
}

Deno.test({
  ...withRunc,
  name:
    "runc --criu criu-netlock, iptables, NETLOCK_HOLD=1: a container on the host's network holds what its lock stops from checkpoint to restore and keeps every connection",
  async fn() {
    await using setup = await hostContainer();
    const { host, before, container, peer } = setup;
    const held = { NETLOCK_BACKEND: "iptables", NETLOCK_HOLD: "1" };
    await keepsEveryConnection(
      host,
      before,
      peer,
      "iptables",
      () => container.checkpoint([], held),
      () => container.restore(held),
      // NETLOCK_HOLD reached the hook through runc and CRIU: its helper holds a queue.
      async () => assert.equal((await boundQueues(host)).length, 1, "the helper holds its queue"),
    );
    assert.deepEqual(await boundQueues(host), [], "the queue went once the restore released it");
  },
});

Deno.test({
  ...withRunc,
  name: "runc with CRIU's lock skipped and no hook (the control): the connections break",
  async fn() {
    await using pod = await createPod(createNetns);
    await using nolock = await criuWithoutLock();
    await using container = await startContainer(pod.peer, PORT, pod.pod.path);
    const at = { netns: pod.pod, address: pod.address };
    await using peer = await startPeer(pod.peer, at, PORT, CONNECTIONS);
    await peer.flowing();
    const dropped = await undelivered(pod.pod);
    const checkpoint = await container.checkpoint([], {}, nolock.path);
    assert.equal(checkpoint.code, 0, checkpoint.stderr);
    const during = await undelivered(pod.pod) - dropped;
    assert.ok(during < LOCKED, `nothing locked the namespace (${during} dropped)`);
    // Unlocked, the peer's packets meet closed sockets: reset, while the
    // restore itself succeeds (the connections break for want of a lock).
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.ok(peer.broken() > 0, "the peer's connections were reset while checkpointed");
    const restore = await container.restore({}, nolock.path);
    assert.equal(restore.code, 0, restore.stderr);
    const verdict = await peer.stop();
    assert.ok(verdict.resets > 0 && !verdict.ok, JSON.stringify(verdict));
  },
});
