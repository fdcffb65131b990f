/**
 * The lines CRIU's log gets from the hook about a tree in CRIU's namespace:
 * what stays locked after a dump, and why a tree is locked by connection.
 * Pure.
 *
 * @module
 */

import { connectionLockName } from "../connections/ruleset.ts";

/**
 * The line CRIU's log gets after a dump that leaves a tree's connections
 * locked: what stays, until when, and how to remove it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { keptNote } from "./notes.ts";
 *
 * assert.match(keptNote(42, { name: "NETLOCK", connections: 3 }), /netlock unlock 42/);
 * ```
 *
 * @param pid The dumped tree's root.
 * @param lock The connection lock: its name and how many connections it holds.
 * @returns The line.
 */
export function keptNote(pid: number, lock: { name: string; connections?: number }): string {
  return `the ${lock.connections ?? 0} dumped connections of process ${pid} stay locked ` +
    `(${connectionLockName(lock.name, pid)}) until a restore of these images succeeds, ` +
    "also across failed restores; a tree that runs on after this dump keeps nothing; " +
    `remove it by hand with 'netlock unlock ${pid}' (or 'netlock unlock --all')`;
}

/**
 * The line CRIU's log gets when a tree in CRIU's namespace is locked by
 * connection rather than by its cgroup, and what that costs.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionNote } from "./notes.ts";
 *
 * assert.match(connectionNote(42, "has no cgroup of its own"), /locked by address from pre-dump on/);
 * ```
 *
 * @param pid The tree's root.
 * @param why Why not by its cgroup.
 * @returns The line.
 */
export function connectionNote(pid: number, why: string): string {
  return `process ${pid} shares CRIU's network namespace and ${why}: its connections are ` +
    "locked by address from pre-dump on; a connection it opens before the freeze is locked " +
    "at post-dump (CRIU aborts a dump that such a connection disturbs)";
}
