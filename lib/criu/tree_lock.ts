/**
 * The CRIU hook's lock for a process tree that shares CRIU's network
 * namespace (a service on the host, a host-network container). CRIU runs no
 * `network-lock` or `network-unlock` for such a tree, so the hook's helper
 * locks it itself:
 *
 * - before the freeze (`pre-dump`): by the tree's cgroup v2 when it has one
 *   of its own and every TCP socket of the tree belongs to it (one rule per
 *   direction: every socket of the tree, those it opens later included),
 *   and by the connections and listeners it has then (by address: the
 *   frozen window pays for none of it);
 * - once the dump succeeded, still frozen (`post-dump`): every connection
 *   the dump took by its addresses and ports, and every listener by its
 *   address and port (a client's SYN is dropped: it waits for the restored
 *   service instead of being refused), so that the lock outlives the
 *   tree after a final dump (a socket rule matches nothing once the sockets
 *   are gone, and the peers' packets would be answered with resets): those
 *   in CRIU's images that the pre-dump lock does not hold are added
 *   (usually none);
 * - once that is made, the cgroup lock goes (a fallback started in the
 *   tree's cgroup must be able to talk);
 * - when CRIU is gone: nothing of it is left if the tree runs again
 *   (`--leave-running`, a failed dump, a CRIU that died); after a final dump
 *   the dumped connections stay locked until a restore succeeds.
 *
 * Its neighbours: the tree's probes (./tree_probe.ts), the keys that
 * compare what was locked with what CRIU's images hold (./socket_keys.ts),
 * the lines for CRIU's log (./notes.ts), and the narrowing of a pod's
 * namespace lock after a failed restore (./narrow.ts).
 *
 * @module
 */

import { probeTree } from "../connections/discover.ts";
import type { DumpedSockets } from "./dumped_sockets.ts";
import { prepare, resolveOptions } from "../netns/prepare.ts";
import { cgroupShape } from "../shape/cgroup.ts";
import { connectionShape } from "../shape/connections.ts";
import type { NamespaceOutcome } from "../shape/shape.ts";
import { unlockAllBackends } from "../unlock/backends.ts";
import { addToConnectionLock } from "../lock/process.ts";
import { lockConnectionsOf, lockNetwork } from "../operations.ts";
import type { NetlockOptions, OperationResult } from "../common/types.ts";
import { connectionKey, listenerKey } from "./socket_keys.ts";
import { connectionNote } from "./notes.ts";
import { cgroupOfItsOwn, ownExec, socketsOutside } from "./tree_probe.ts";

/** What the hook locked before the freeze. */
export interface TreeLocked {
  /** The lock made: by cgroup, or by connection. */
  kind: "cgroup" | "connections";
  /** Why the tree is locked by connection rather than by cgroup (for CRIU's log). */
  note?: string;
  /** The lock's report. */
  result: OperationResult;
  /**
   * The connection lock made before the freeze (`NAME-cPID`; for a cgroup
   * lock, beside it), and the connections found just before it was made
   * (their {@linkcode connectionKey}s, made before the freeze too): at
   * `post-dump` only those the dump took beyond them are added.
   */
  byAddress?: { lock: OperationResult; held: ReadonlySet<string> };
}

/**
 * Locks a tree that shares netlock's namespace before CRIU freezes it: by
 * its cgroup v2 when no process outside the tree is in it, every TCP socket
 * of the tree belongs to it (a socket belongs to the cgroup it was made in:
 * one accepted on a listener made elsewhere is not), and it is neither the
 * root cgroup nor netlock's own; else by its connections.
 *
 * @example
 * ```ts
 * import { lockTreeBeforeFreeze } from "./tree_lock.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const locked = await lockTreeBeforeFreeze(1234, { backend: "nftables" });
 *   if (locked.note) console.error(locked.note);
 * }
 * ```
 *
 * @param pid The tree's root (CRIU's `CRTOOLS_INIT_PID`).
 * @param options The hook's options.
 * @returns What was locked.
 */
export async function lockTreeBeforeFreeze(
  pid: number,
  options: NetlockOptions,
): Promise<TreeLocked> {
  // A lock that holds queues what it stops (iptables' NFQUEUE); the cgroup
  // lock is nftables', which cannot queue here: by connection alone.
  if (options.queue !== undefined) {
    const why = "its lock holds what it stops (NETLOCK_HOLD=1), which a cgroup lock (nftables) " +
      "cannot";
    return { ...(await lockByAddress(pid, options)), note: connectionNote(pid, why) };
  }
  const exec = ownExec(options);
  const probe = await probeTree(exec, pid, { members: true, socketCgroups: true }).catch(
    // No ss, or one without --cgroup: the sockets' cgroups cannot be checked.
    async (error) => ({ ...(await probeTree(exec, pid, { members: true })), error }),
  );
  const why = cgroupOfItsOwn(probe.tree) ??
    ("error" in probe
      ? `the cgroups of its sockets could not be read (${(probe.error as Error).message})`
      : socketsOutside(probe.tree, probe.socketCgroups));
  if (why === undefined) {
    let result: OperationResult;
    try {
      result = await lockNetwork(pid, { ...options, backend: "nftables", mode: "cgroup" });
    } catch (error) {
      // No nft, say: the connections, as for a tree without a cgroup of its own.
      const note = `the cgroup lock failed (${(error as Error).message})`;
      return { ...(await lockByAddress(pid, options)), note: connectionNote(pid, note) };
    }
    // The cgroup lock holds every socket of the tree; its connections by
    // address now too, outside the frozen window (a failure leaves that to
    // post-dump).
    const byAddress = await lockByAddress(pid, options).catch(() => undefined);
    return { kind: "cgroup", result, byAddress: byAddress?.byAddress };
  }
  return { ...(await lockByAddress(pid, options)), note: connectionNote(pid, why) };
}

/**
 * The tree's connections locked by address, and the keys of the
 * connections the lock was made for (its own probe's: the tree is probed
 * once).
 */
async function lockByAddress(
  pid: number,
  options: NetlockOptions,
): Promise<{ kind: "connections"; result: OperationResult } & Pick<TreeLocked, "byAddress">> {
  const { result, locked, listeners } = await lockConnectionsOf(pid, options);
  return {
    kind: "connections",
    result,
    byAddress: {
      lock: result,
      held: new Set([...locked.map(connectionKey), ...listeners.map(listenerKey)]),
    },
  };
}

/**
 * At `post-dump`, the connection lock made before the freeze completed with
 * the connections the dump took (from CRIU's images) that it does not hold:
 * usually none, and then nothing runs inside the frozen window. `undefined`
 * when there is no such lock or the missing ones could not be added (the
 * caller then locks the tree's connections anew).
 *
 * @param pid The tree's root.
 * @param options The hook's options.
 * @param before What `pre-dump` locked.
 * @param dumped The TCP connections and listeners in CRIU's images.
 * @returns The lock's report, covering every dumped connection.
 */
export async function completeTreeLock(
  pid: number,
  options: NetlockOptions,
  before: TreeLocked | undefined,
  dumped: DumpedSockets,
): Promise<OperationResult | undefined> {
  if (!before?.byAddress) return undefined;
  const { lock, held } = before.byAddress;
  const missing = dumped.connections.filter((connection) => !held.has(connectionKey(connection)));
  const listeners = dumped.listeners.filter((listener) => !held.has(listenerKey(listener)));
  const report = { ...lock, connections: dumped.connections.length };
  if (missing.length === 0 && listeners.length === 0) return { ...report, changed: false };
  // Added to the lock as it is: one transaction (a family), not the whole
  // lock again inside the window.
  const made = { ...lock, queue: options.queue };
  return await addToConnectionLock(ownExec(options), pid, made, missing, listeners)
    ? { ...report, changed: true }
    : undefined;
}

/**
 * Locks every connection of the tree by its addresses and ports, in one
 * transaction: what keeps the peers from being answered with resets once
 * the tree is gone. When the lock made before the freeze was an nftables
 * connection lock (`before`), the tree's connections are added to its sets
 * (a connection closed since stays in them, harmless, until the unlock):
 * this runs inside CRIU's frozen window, where making the table anew costs
 * a failed create and a replacement, 20-40 ms each here. When that fails
 * (the table is gone), the lock is made anew.
 *
 * @param pid The tree's root.
 * @param options The hook's options.
 * @returns The lock's report.
 */
export async function lockTreeConnections(
  pid: number,
  options: NetlockOptions,
  before?: TreeLocked,
): Promise<OperationResult> {
  if (before?.kind === "connections" && before.result.backend === "nftables") {
    const added = await addTreeConnections(pid, options, before.result).catch(() => undefined);
    if (added) return added;
  }
  return (await lockConnections(pid, options)).result;
}

/** The tree's connections now, added to the sets of the connection lock `made`. */
async function addTreeConnections(
  pid: number,
  options: NetlockOptions,
  made: OperationResult,
): Promise<OperationResult | undefined> {
  const started = performance.now();
  const exec = ownExec(options);
  const { connections = [] } = await probeTree(exec, pid, { connections: true });
  if (connections.length === 0) return { ...made, changed: false };
  if (!await addToConnectionLock(exec, pid, made, connections)) return undefined;
  return {
    ...made,
    changed: true,
    connections: connections.length,
    durationMs: performance.now() - started,
  };
}

/**
 * Removes locks the hook made for the tree, by kind and by the names they
 * were made under, in netlock's own namespace, where they were made:
 * whatever process has the PID by now (none, a zombie, another process in
 * another namespace) changes nothing of it.
 *
 * @param pid The tree's root, as it was dumped.
 * @param options The hook's options.
 * @param kinds Which: the connection lock, the cgroup lock, or both.
 * @param netnsOf Where, when not netlock's own namespace: the namespace of this
 *   process (a restored tree, whose PID outside its PID namespace is new).
 * @returns What was done.
 */
export async function unlockKept(
  pid: number,
  options: NetlockOptions,
  kinds: ("connections" | "cgroup")[],
  netnsOf?: number,
): Promise<NamespaceOutcome> {
  // netlock's own namespace (or `netnsOf`'s) as a namespace target, for the unlock alone.
  const opts = resolveOptions({ ...options, mode: "netns", force: true }, "unlock");
  const where = netnsOf === undefined ? { label: "netlock's own namespace", nsenterArgs: [] } : {
    label: `the namespace of process ${netnsOf}`,
    nsenterArgs: ["--target", String(netnsOf), "--net"],
  };
  const prepared = await prepare(where, opts, "unlock");
  const shapes = kinds.map((kind) =>
    kind === "cgroup"
      ? cgroupShape(opts.name, opts.mark, pid)
      : connectionShape(opts.name, opts.mark, pid)
  );
  return await unlockAllBackends(prepared, opts, { shapes });
}

/** The tree's connections and listeners locked by address (what a dump takes). */
async function lockConnections(
  pid: number,
  options: NetlockOptions,
): Promise<{ kind: "connections"; result: OperationResult }> {
  const { result } = await lockConnectionsOf(pid, options);
  return { kind: "connections", result };
}
