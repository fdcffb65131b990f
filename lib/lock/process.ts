/**
 * The locks made for one process: the TCP connections of its whole tree
 * (connection mode, CRIU's lock for a tree in the host's namespace), or
 * every socket of its cgroup v2 (cgroup mode). Both refuse what would cut
 * netlock off (a tree that holds netlock itself; netlock's own cgroup, or
 * the root cgroup), and a process that exits while it is being locked
 * leaves nothing locked.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { probeTree } from "../connections/discover.ts";
import { cgroupWithin, type ProcessTree } from "../connections/tree_parser.ts";
import type { Connection, Listener } from "../connections/proc_net_parser.ts";
import { cgroupShape } from "../shape/cgroup.ts";
import { connectionShape } from "../shape/connections.ts";
import type { LockShape, NamespaceOutcome } from "../shape/shape.ts";
import type { Prepared, ResolvedOptions } from "../netns/prepare.ts";
import { unlockAllBackends } from "../unlock/backends.ts";
import { lockWithBackend } from "./apply.ts";
import {
  connectionLockName,
  renderIptablesConnectionAdd,
  renderNftConnectionAdd,
} from "../connections/ruleset.ts";
import { renderNftOpen, renderNftReturnFirst } from "../nftables/ruleset.ts";
import type { ToolExec } from "../exec/nsenter.ts";
import { FAMILY_TOOLS } from "../iptables/backend.ts";
import { dropVerdict } from "../iptables/ruleset.ts";
import type { Family } from "../common/types.ts";

/**
 * Locks the TCP connections of the process tree of `pid` (the process and
 * every descendant, as CRIU dumps it), in one transaction; with
 * `listeners`, its listeners too (a SYN to one is dropped: what the CRIU
 * hook keeps of a dumped tree; `--mode connections` locks connections only).
 *
 * @param prepared The probed target (netlock's own namespace, usually).
 * @param opts The validated options.
 * @param pid The tree's root.
 * @param listeners Whether the tree's listeners are locked too.
 * @returns What was done, with the connections (and listeners) locked.
 */
export async function lockConnections(
  prepared: Prepared,
  opts: ResolvedOptions,
  pid: number,
  listeners = false,
): Promise<NamespaceOutcome> {
  const probe = await probeTree(prepared.exec, pid, { connections: true });
  const { tree, connections } = probe;
  refuseOwnTree(tree, opts);
  const listening = listeners ? probe.listeners ?? [] : [];
  const shape = connectionShape(opts.name, opts.mark, pid, connections, listening, opts.queue);
  const outcome = await whileSameProcess(
    prepared,
    opts,
    tree,
    shape,
    "connections",
    () => lockWithBackend(prepared, opts, shape),
  );
  return {
    ...outcome,
    connections: (connections as Connection[]).length,
    lockedConnections: connections,
    lockedListeners: listening,
  };
}

/**
 * Locks every socket of the cgroup v2 of `pid` (and of the cgroups below
 * it): TCP and UDP, sockets made later included, one rule per direction.
 * An nftables table whatever the backend asked for: iptables cannot match
 * incoming packets by cgroup.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @param pid The process whose cgroup is locked.
 * @returns What was done.
 */
export async function lockCgroup(
  prepared: Prepared,
  opts: ResolvedOptions,
  pid: number,
): Promise<NamespaceOutcome> {
  const { tree } = await probeTree(prepared.exec, pid);
  const cgroup = lockableCgroup(tree, pid);
  const shape = cgroupShape(opts.name, opts.mark, pid, cgroup);
  const nftables = { ...opts, backend: "nftables" as const };
  return await whileSameProcess(
    prepared,
    opts,
    tree,
    shape,
    "cgroup",
    () => lockWithBackend(prepared, nftables, shape),
  );
}

/**
 * The cgroup of a tree's root, if a cgroup lock may be made for it: not the
 * root cgroup (every process of the system), not netlock's own (nor one
 * holding it), a path nft can be given, and cgroup v2 mounted.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { lockableCgroup } from "./process.ts";
 *
 * const tree = { root: 42, pids: [42], start: "1", cgroup: "/app", ownCgroup: "/", cgroupMount: "/sys/fs/cgroup" };
 * assert.deepEqual(lockableCgroup(tree, 42), { path: "/app", mount: "/sys/fs/cgroup" });
 * assert.throws(() => lockableCgroup({ ...tree, cgroup: "/" }, 42), /root cgroup/);
 * ```
 *
 * @param tree The probed tree.
 * @param pid The process.
 * @returns The cgroup's path and where cgroup v2 is mounted.
 */
export function lockableCgroup(tree: ProcessTree, pid: number): { path: string; mount: string } {
  const refuse = (why: string) => {
    throw new NetlockError("CGROUP_REFUSED", `cannot lock the cgroup of process ${pid}: ${why}`);
  };
  if (!tree.cgroupMount) return refuse("cgroup v2 is not mounted");
  if (tree.cgroup === "" || tree.cgroup === "/") {
    return refuse("it is in the root cgroup, which holds every process of the system");
  }
  if (cgroupWithin(tree.ownCgroup, tree.cgroup)) {
    return refuse(`netlock itself runs in its cgroup ${tree.cgroup} (it would cut itself off)`);
  }
  // deno-lint-ignore no-control-regex
  if (/["\\\u0000-\u001f\u007f]/.test(tree.cgroup)) {
    return refuse(`nft cannot be given the path ${JSON.stringify(tree.cgroup)}`);
  }
  return { path: tree.cgroup, mount: tree.cgroupMount };
}

/** A tree that holds netlock itself: locking it would cut the caller off. */
function refuseOwnTree(tree: ProcessTree, opts: ResolvedOptions): void {
  if (opts.force || !tree.pids.includes(Deno.pid)) return;
  throw new NetlockError(
    "OWN_NAMESPACE",
    `refusing to lock the connections of process ${tree.root}: netlock itself is in its tree ` +
      "(locking it would cut this session off); add --force",
  );
}

/**
 * Makes a lock, then checks that the process is still the one probed: if
 * it exited meanwhile (or its PID went to another), whatever was applied is
 * removed again and the lock fails, saying so.
 */
async function whileSameProcess(
  prepared: Prepared,
  opts: ResolvedOptions,
  tree: ProcessTree,
  shape: LockShape,
  kind: "connections" | "cgroup",
  lock: () => Promise<NamespaceOutcome>,
): Promise<NamespaceOutcome> {
  const same = async () =>
    opts.dryRun ||
    await probeTree(prepared.exec, tree.root).then((probe) => probe.tree.start, () => "") ===
      tree.start;
  let outcome: NamespaceOutcome;
  try {
    outcome = await lock();
  } catch (error) {
    if (await same()) throw error;
    // Whatever of it may have landed goes below.
    outcome = { changed: true, backend: "nftables" };
  }
  if (await same()) return outcome;
  if (outcome.changed) {
    const patient = { ...prepared, exec: prepared.patientExec, prefetch: undefined };
    await unlockAllBackends(patient, opts, { shapes: [shape] });
  }
  throw new NetlockError(
    "NO_SUCH_TARGET",
    `process ${tree.root} exited while its ${kind} were being locked; nothing is left locked`,
  );
}

/**
 * Adds connections (and listeners) to the connection lock of tree `pid`
 * that `made` reports: to its nftables sets (one `nft`), or their drops
 * appended to its iptables chain (one `iptables-restore` for each family
 * with some, at once). Nothing is replaced: the lock holds what it held
 * all along.
 *
 * @example
 * ```ts
 * import { addToConnectionLock } from "./process.ts";
 * import { nsenterExec } from "../exec/nsenter.ts";
 *
 * // Needs root and a connection lock of process 42: type-checked here, not run.
 * export async function example(): Promise<boolean> {
 *   const made = { backend: "nftables" as const, families: ["ipv4" as const], name: "NETLOCK" };
 *   return await addToConnectionLock(nsenterExec([], { timeoutMs: 5_000 }), 42, made, []);
 * }
 * ```
 *
 * @param exec Runs a tool where the lock is.
 * @param pid The tree's root (the lock is `NAME-cPID`).
 * @param made The lock's report: its backend, families and name; the queue of a lock that holds.
 * @param connections The connections to add.
 * @param listeners The listeners to add.
 * @returns `true` when every tool succeeded.
 */
export async function addToConnectionLock(
  exec: ToolExec,
  pid: number,
  made: { backend: "iptables" | "nftables"; families: Family[]; name: string; queue?: number },
  connections: readonly Connection[],
  listeners: readonly Listener[] = [],
): Promise<boolean> {
  const name = connectionLockName(made.name, pid);
  const runs = made.backend === "nftables"
    ? [exec("nft", ["-f", "-"], renderNftConnectionAdd(name, connections, listeners))]
    : made.families
      .map((family) => ({
        family,
        script: renderIptablesConnectionAdd(
          name,
          connections,
          family,
          listeners,
          dropVerdict(made.queue),
        ),
      }))
      // A family with drops to add.
      .filter(({ script }) => script !== "*filter\nCOMMIT\n")
      .map(({ family, script }) => exec(FAMILY_TOOLS[family].restore, ["-w", "--noflush"], script));
  return (await Promise.all(runs)).every((run) => run.success);
}

/**
 * The opening of the connection lock of tree `pid`, for `nft -f -`: an
 * `accept` at the head of both chains of its nftables table, or a `return`
 * at the head of its iptables chain in every family (iptables-nft: its
 * rules are nf_tables objects). It deletes nothing: an nf_tables
 * transaction that deletes waits for an RCU grace period, and one that
 * deletes a base chain unregisters its hook, which drops what a holder
 * holds. Fails when the lock is not there (or on legacy iptables).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderConnectionLockOpen } from "./process.ts";
 *
 * assert.equal(
 *   renderConnectionLockOpen({ backend: "iptables", families: ["ipv4"], name: "NETLOCK" }, 42),
 *   "insert rule ip filter NETLOCK-c42 return\n",
 * );
 * ```
 *
 * @param made The lock's backend, families and name.
 * @param pid The tree's root (the lock is `NAME-cPID`).
 * @returns The `nft -f -` input.
 */
export function renderConnectionLockOpen(
  made: { backend: "iptables" | "nftables"; families: readonly Family[]; name: string },
  pid: number,
): string {
  const name = connectionLockName(made.name, pid);
  return made.backend === "nftables"
    ? renderNftOpen({ name, mark: 0 })
    : renderNftReturnFirst(name, made.families);
}

/**
 * Opens the connection lock of tree `pid` (see
 * {@linkcode renderConnectionLockOpen}): one `nft -f -`, in one
 * transaction. What held packets wait for before they are let through.
 *
 * @example
 * ```ts
 * import { openConnectionLock } from "./process.ts";
 * import { nsenterExec } from "../exec/nsenter.ts";
 *
 * // Needs root and a connection lock of process 42: type-checked here, not run.
 * export async function example(): Promise<boolean> {
 *   const made = { backend: "iptables" as const, families: ["ipv4" as const], name: "NETLOCK" };
 *   return await openConnectionLock(nsenterExec([], { timeoutMs: 5_000 }), 42, made);
 * }
 * ```
 *
 * @param exec Runs a tool where the lock is.
 * @param pid The tree's root.
 * @param made The lock's backend, families and name.
 * @returns `true` when it was opened.
 */
export async function openConnectionLock(
  exec: ToolExec,
  pid: number,
  made: { backend: "iptables" | "nftables"; families: readonly Family[]; name: string },
): Promise<boolean> {
  return (await exec("nft", ["-f", "-"], renderConnectionLockOpen(made, pid))).success;
}
