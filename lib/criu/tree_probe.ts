/**
 * What the CRIU hook asks of a process tree (through spawned tools, as
 * everything netlock reads of a target): its start time and place,
 * whether it still runs as the tree it probed, and whether its cgroup is
 * its own and holds all its sockets.
 *
 * @module
 */

import { probeTree } from "../connections/discover.ts";
import { cgroupWithin, type ProcessTree } from "../connections/tree_parser.ts";
import { nsenterExec, type ToolExec } from "../exec/nsenter.ts";
import { DEFAULT_TIMEOUT_MS } from "../common/options.ts";
import { lockableCgroup } from "../lock/process.ts";
import type { NetlockOptions } from "../common/types.ts";

/**
 * Whether the process probed as `start` still runs (not exited, not a
 * zombie, its PID not taken by another process).
 *
 * @param pid The process.
 * @param start Its start time when it was probed.
 * @param options The hook's options (the tools' timeout).
 * @returns `true` while it runs.
 */
export async function stillRuns(
  pid: number,
  start: string,
  options: NetlockOptions = {},
): Promise<boolean> {
  try {
    const { tree } = await probeTree(ownExec(options), pid);
    return tree.start === start && tree.state !== "Z" && tree.state !== "X";
  } catch {
    return false;
  }
}

/**
 * Where a dumped tree is: `host` when it shares CRIU's network namespace
 * (netlock's own: the hook runs there), to which CRIU sends no network
 * action; `netns` when it has a namespace of its own. These two words are
 * its one encoding: the helper's `ready` answer, its directory's `place`
 * file, the restore plan's `kind` key (version 1's name for it), the
 * restore watcher's role.
 */
export type TreePlace = "host" | "netns";

/**
 * A tree's root as the hook first sees it, in one probe: its start time
 * (to tell it, once CRIU is gone, from a later process of its PID) and its
 * place.
 *
 * @param pid The tree's root.
 * @param options The hook's options (the tools' timeout).
 * @returns Its start time and place; throws when it does not exist.
 */
export async function identifyTree(
  pid: number,
  options: NetlockOptions = {},
): Promise<{ start: string; place: TreePlace }> {
  const { tree } = await probeTree(ownExec(options), pid);
  return { start: tree.start, place: tree.ownNetns ? "host" : "netns" };
}

/**
 * Why a tree has no cgroup v2 of its own, or `undefined` when it has: its
 * root's cgroup holds no process outside the tree, and may be locked.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { cgroupOfItsOwn } from "./tree_probe.ts";
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

/**
 * Why a tree's cgroup lock would miss some of its sockets, or `undefined`:
 * a TCP socket of the tree (listeners included) that belongs to a cgroup
 * outside the tree's (made by a process before it moved, accepted on a
 * listener made elsewhere, inherited from a parent elsewhere).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { socketsOutside } from "./tree_probe.ts";
 *
 * const tree = { root: 42, pids: [42], start: "1", cgroup: "/app", ownCgroup: "/" };
 * assert.equal(socketsOutside(tree, new Map([["7", "/app/x"]])), undefined);
 * assert.match(socketsOutside(tree, new Map([["7", "/web"]]))!, /socket 7 belongs to cgroup \/web/);
 * ```
 *
 * @param tree The tree.
 * @param sockets The cgroup of each of its TCP sockets, by inode.
 * @returns The reason, or `undefined`.
 */
export function socketsOutside(
  tree: ProcessTree,
  sockets: Map<string, string | undefined> = new Map(),
): string | undefined {
  const outside = [...sockets].filter(([, cgroup]) =>
    cgroup === undefined || !cgroupWithin(cgroup, tree.cgroup)
  );
  if (outside.length === 0) return undefined;
  const [inode, cgroup] = outside[0];
  return `${outside.length} of its TCP sockets are not its cgroup's (socket ${inode} belongs ` +
    `to cgroup ${cgroup ?? "unknown"}, as a socket accepted on a listener made there does), ` +
    "so a cgroup lock would miss them";
}

/**
 * Runs a tool in netlock's own namespace (where CRIU and a host tree are)
 * with the hook's timeout and log: the one way the hook's lock and probes
 * spawn there.
 *
 * @example
 * ```ts
 * import { ownExec } from "./tree_probe.ts";
 *
 * // Spawns a tool: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   console.log((await ownExec({ timeoutMs: 5_000 })("nft", ["list", "tables"])).stdout);
 * }
 * ```
 *
 * @param options The hook's options (`timeoutMs`, `log`).
 * @returns The exec.
 */
export function ownExec(options: NetlockOptions = {}): ToolExec {
  return nsenterExec([], { timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS, log: options.log });
}
