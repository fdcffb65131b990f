/**
 * The CRIU hook's lock for a process tree that shares CRIU's network
 * namespace (a service on the host, a host-network container). CRIU runs no
 * `network-lock` or `network-unlock` for such a tree, so the hook's helper
 * locks it itself:
 *
 * - before the freeze (`pre-dump`): by the tree's cgroup v2 when it has one
 *   of its own (one rule per direction: every socket of the tree, those it
 *   opens later included), else by the connections it has then;
 * - once the dump succeeded, still frozen (`post-dump`): every connection
 *   of the tree by its addresses and ports, so that the lock outlives the
 *   tree after a final dump (a socket rule matches nothing once the sockets
 *   are gone, and the peers' packets would be answered with resets);
 * - when CRIU is gone: nothing of it is left if the tree runs again
 *   (`--leave-running`, a failed dump, a CRIU that died); after a final dump
 *   it stays for the restore.
 *
 * @module
 */

import { probeTree } from "../connections/discover.ts";
import { connectionLockName, renderNftConnectionAdd } from "../connections/ruleset.ts";
import type { ProcessTree } from "../connections/tree_parser.ts";
import { nsenterExec } from "../exec/nsenter.ts";
import { ownNetns, probeTarget, toTargetRef } from "../target/target.ts";
import { lockableCgroup } from "../lock/process.ts";
import { lockNetwork, unlockNetwork } from "../operations.ts";
import type { NetlockOptions, OperationResult } from "../common/types.ts";

/** What the hook locked before the freeze. */
export interface TreeLocked {
  /** The lock made: by cgroup, or by connection. */
  kind: "cgroup" | "connections";
  /** Why the tree is locked by connection rather than by cgroup (for CRIU's log). */
  note?: string;
  /** The lock's report. */
  result: OperationResult;
}

/**
 * Locks a tree that shares netlock's namespace before CRIU freezes it: by
 * its cgroup v2 when no process outside the tree is in it (and it is
 * neither the root cgroup nor netlock's own), else by its connections.
 *
 * @example
 * ```ts ignore
 * import { lockTreeBeforeFreeze } from "./tree_lock.ts";
 *
 * const locked = await lockTreeBeforeFreeze(1234, { backend: "nftables" });
 * if (locked.note) console.error(locked.note);
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
  const { tree } = await probeTree(nsenterExec([], { timeoutMs: 10_000 }), pid, { members: true });
  const why = cgroupOfItsOwn(tree);
  if (why === undefined) {
    try {
      const result = await lockNetwork(pid, { ...options, backend: "nftables", mode: "cgroup" });
      return { kind: "cgroup", result };
    } catch (error) {
      // No nft, say: the connections, as for a tree without a cgroup of its own.
      const note = `the cgroup lock failed (${(error as Error).message})`;
      return { ...(await lockConnections(pid, options)), note: connectionNote(pid, note) };
    }
  }
  return { ...(await lockConnections(pid, options)), note: connectionNote(pid, why) };
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
  const exec = nsenterExec([], { timeoutMs: options.timeoutMs ?? 10_000, log: options.log });
  const { connections = [] } = await probeTree(exec, pid, { connections: true });
  if (connections.length === 0) return { ...made, changed: false };
  const script = renderNftConnectionAdd(connectionLockName(made.name, pid), connections);
  if (!(await exec("nft", ["-f", "-"], script)).success) return undefined;
  return {
    ...made,
    changed: true,
    connections: connections.length,
    durationMs: performance.now() - started,
  };
}

/**
 * Removes every lock the hook made for the tree (by cgroup and by
 * connection), whether its process still exists or not.
 *
 * @param pid The tree's root.
 * @param options The hook's options.
 * @returns The unlock's report.
 */
export async function unlockTree(pid: number, options: NetlockOptions): Promise<OperationResult> {
  return await unlockNetwork(pid, { ...options, mode: "auto" });
}

/**
 * Whether the process probed as `start` still runs (not exited, not a
 * zombie, its PID not taken by another process).
 *
 * @param pid The process.
 * @param start Its start time when it was probed.
 * @returns `true` while it runs.
 */
export async function stillRuns(pid: number, start: string): Promise<boolean> {
  try {
    const { tree } = await probeTree(nsenterExec([], { timeoutMs: 10_000 }), pid);
    return tree.start === start && tree.state !== "Z" && tree.state !== "X";
  } catch {
    return false;
  }
}

/**
 * Whether a process shares netlock's network namespace (a tree in CRIU's
 * own namespace, for the hook: CRIU sends it no network actions).
 *
 * @param pid The process.
 * @param options The hook's options (timeout).
 * @returns `true` when it does.
 */
export async function sharesNetlockNamespace(
  pid: number,
  options: NetlockOptions,
): Promise<boolean> {
  const ref = toTargetRef(pid);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const probe = await probeTarget(ref, nsenterExec(ref.nsenterArgs, { timeoutMs }), Deno.pid);
  return probe.netns === (probe.own ?? await ownNetns({ timeoutMs }));
}

/** The start time of a process, probed now (`""` when it does not exist). */
export async function startOf(pid: number): Promise<string> {
  try {
    return (await probeTree(nsenterExec([], { timeoutMs: 10_000 }), pid)).tree.start;
  } catch {
    return "";
  }
}

/**
 * Why a tree has no cgroup v2 of its own, or `undefined` when it has: its
 * root's cgroup holds no process outside the tree, and may be locked.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { cgroupOfItsOwn } from "./tree_lock.ts";
 *
 * const tree = {
 *   root: 42, pids: [42, 43], start: "1", cgroup: "/app", ownCgroup: "/",
 *   cgroupMount: "/sys/fs/cgroup", members: [42, 43],
 * };
 * assert.equal(cgroupOfItsOwn(tree), undefined);
 * assert.match(cgroupOfItsOwn({ ...tree, members: [42, 43, 7] })!, /process 7, outside the tree, is in it too/);
 * ```
 *
 * @param tree The tree, with the members of its root's cgroup.
 * @returns The reason, or `undefined`.
 */
export function cgroupOfItsOwn(tree: ProcessTree): string | undefined {
  try {
    lockableCgroup(tree, tree.root);
  } catch (error) {
    return (error as Error).message.replace(/^cannot lock the cgroup of process [0-9]+: /, "");
  }
  const outsider = (tree.members ?? []).find((pid) => !tree.pids.includes(pid));
  if (outsider !== undefined) {
    return `its cgroup ${tree.cgroup} is not its own (process ${outsider}, outside the tree, is in it too)`;
  }
  return undefined;
}

async function lockConnections(
  pid: number,
  options: NetlockOptions,
): Promise<{ kind: "connections"; result: OperationResult }> {
  const result = await lockNetwork(pid, { ...options, mode: "connections" });
  return { kind: "connections", result };
}

function connectionNote(pid: number, why: string): string {
  return `process ${pid} shares CRIU's network namespace and ${why}: its connections are ` +
    "locked by address from pre-dump on; a connection it opens before the freeze is locked " +
    "at post-dump (CRIU aborts a dump that such a connection disturbs)";
}
