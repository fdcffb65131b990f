/**
 * What `netlock list` shows: every lock of netlock's in one namespace (the
 * namespace lock `NAME`, the connection locks `NAME-cPID`), in either
 * backend, and CRIU's leftovers on request, read in two rounds of spawns:
 * the filter tables and nft's tables, then the connection counts of nft
 * locks and whether the locked processes still exist.
 *
 * @module
 */

import { processLockOf } from "../connections/ruleset.ts";
import { isCriuNftTable } from "../unlock/criu_locks.ts";
import { NetlockError } from "../common/errors.ts";
import { readIptablesTable } from "../iptables/backend.ts";
import { missingToolError } from "../shape/shape.ts";
import {
  type NftTableView,
  parseNftTableJson,
  parseNftTablesJson,
} from "../nftables/view_parser.ts";
import { isNetlockTable } from "../nftables/lock_state.ts";
import { inspectIptablesLock } from "../iptables/lock_state.ts";
import { DEFAULT_MARK } from "../common/options.ts";
import { assertToolSuccess, type ToolExec } from "../exec/nsenter.ts";
import type { Family, LockInfo, LockKind } from "../common/types.ts";

/** What the inventory looks for, and where. */
export interface InventoryRequest {
  /** Runs a tool in the namespace. */
  exec: ToolExec;
  /** Runs a tool in netlock's own namespaces (to see whether a PID exists). */
  ownExec: ToolExec;
  /** The families the namespace has. */
  families: Family[];
  /** The lock name. */
  name: string;
  /** Also CRIU's locks (chain `CRIU`, tables `inet CRIU-*`). */
  criu: boolean;
}

/** A lock found, before the namespace's identity is added. */
export type FoundLock = Omit<LockInfo, "target">;

/**
 * Lists the locks in a namespace: namespace lock first, then connection
 * locks by PID, then CRIU's.
 *
 * @param request The namespace's exec, families, the lock name.
 * @returns The locks found; empty when there is none.
 */
export async function readLockInventory(request: InventoryRequest): Promise<FoundLock[]> {
  const { exec, families, name } = request;
  const [tables, nftTables] = await Promise.all([
    Promise.all(families.map((family) => optional(readIptablesTable(exec, family)))),
    optional(listNftTables(exec)),
  ]);
  if (tables.every((table) => table === undefined) && nftTables === undefined) {
    throw new NetlockError("TOOL_NOT_FOUND", "neither nft nor iptables is installed");
  }
  // Which lock a chain or table name is, if any.
  const lockNamed = (
    lockName: string,
    backend: FoundLock["backend"],
    criu: boolean,
  ): FoundLock | undefined => {
    const found = { name: lockName, backend, families: [] as Family[] };
    if (lockName === name) return { kind: "netns", ...found };
    const lock = processLockOf(lockName, name);
    if (lock !== undefined) return { kind: lock.kind, ...found, pid: lock.pid };
    return request.criu && criu ? { kind: "criu", ...found } : undefined;
  };

  // Each iptables connection lock's listeners, by a key each (a family's
  // chain holds its own; a wildcard IPv6 listener is in both).
  const listened = new Map<FoundLock, Set<string>>();
  const listening = (lock: FoundLock): Set<string> => {
    const keys = listened.get(lock) ?? new Set<string>();
    listened.set(lock, keys);
    return keys;
  };
  const iptables = new Map<string, FoundLock>();
  for (const [i, table] of tables.entries()) {
    for (const chain of table?.chains ?? []) {
      const named = lockNamed(chain.name, "iptables", chain.name === "CRIU");
      if (!named) continue;
      // A chain of a lock's name that netlock did not make is listed as such.
      const kind = named.kind === "netns" ? "netns" : "connections";
      const state = inspectIptablesLock(table!, {
        name: chain.name,
        mark: DEFAULT_MARK,
        anyMark: true,
        ...(kind === "connections" ? { body: "any" as const } : {}),
      });
      const foreign = named.kind !== "criu" && state.foreign;
      const key = foreign ? `${chain.name} foreign` : chain.name;
      const lock = iptables.get(key) ??
        (foreign
          ? {
            kind: "foreign" as const,
            name: chain.name,
            backend: "iptables" as const,
            families: [],
          }
          : named);
      lock.families.push(families[i]);
      if (state.queue !== undefined && lock.kind !== "foreign") lock.queue = state.queue;
      if (lock.kind === "connections") {
        lock.connections = (lock.connections ?? 0) + state.connectionDrops / 2;
        // (A wildcard IPv6 listener is dropped in both families: counted once.)
        for (const listener of state.listeners) listening(lock).add(listener);
      }
      iptables.set(key, lock);
    }
  }
  const nftables: FoundLock[] = [];
  for (const table of nftTables ?? []) {
    if (table.family !== "inet") continue;
    const lock = lockNamed(table.name, "nftables", isCriuNftTable(table));
    if (lock) nftables.push({ ...lock, families: [...families] });
  }

  const connectionLocks = [...iptables.values(), ...nftables].filter((lock) => lock.pid);
  const [alive] = await Promise.all([
    existingPids(request.ownExec, connectionLocks.map((lock) => lock.pid!)),
    ...nftables.filter((lock) => lock.kind !== "criu").map(async (lock) => {
      const kind = lock.kind as LockKind;
      const view = await readInetTable(exec, lock.name, kind !== "connections");
      if (view && !isNetlockTable(view, kind)) {
        Object.assign(lock, { kind: "foreign", families: [] });
        delete lock.pid;
      } else if (lock.kind === "connections") {
        lock.connections = (view?.sets.conn4?.length ?? 0) + (view?.sets.conn6?.length ?? 0);
        const listeners = ["listen4", "listen6", "listenany"]
          .reduce((sum, set) => sum + (view?.sets[set]?.length ?? 0), 0);
        if (listeners > 0) lock.listeners = listeners;
      }
    }),
  ]);
  for (const lock of connectionLocks) if (lock.pid) lock.alive = alive.has(lock.pid);
  for (const [lock, keys] of listened) if (keys.size > 0) lock.listeners = keys.size;
  const order = { netns: 0, connections: 1, cgroup: 2, criu: 3, foreign: 4 };
  return [...iptables.values(), ...nftables].sort((a, b) =>
    order[a.kind] - order[b.kind] || (a.pid ?? 0) - (b.pid ?? 0) ||
    a.name.localeCompare(b.name) || a.backend.localeCompare(b.backend)
  ).map((lock) => ({ ...lock, families: sortFamilies(lock.families) }));
}

function sortFamilies(families: Family[]): Family[] {
  return (["ipv4", "ipv6"] as const).filter((family) => families.includes(family));
}

async function listNftTables(exec: ToolExec): Promise<{ family: string; name: string }[]> {
  const result = await exec("nft", ["-j", "list", "tables"]);
  assertToolSuccess(result, "nft");
  return parseNftTablesJson(result.stdout);
}

/**
 * An `inet` table of a lock's name (tersely, without set elements, when
 * they are not counted); `undefined` when it was removed meanwhile.
 */
async function readInetTable(
  exec: ToolExec,
  table: string,
  terse: boolean,
): Promise<NftTableView | undefined> {
  const result = await exec("nft", [
    ...(terse ? ["-t"] : []),
    "-j",
    "list",
    "table",
    "inet",
    table,
  ]);
  if (!result.success && /No such file or directory/.test(result.stderr)) return undefined;
  assertToolSuccess(result, "nft");
  return parseNftTableJson(result.stdout);
}

/**
 * Which of `pids` exist now, seen from netlock's own PID namespace (a
 * zombie, which has no namespaces left, does not count).
 */
async function existingPids(exec: ToolExec, pids: number[]): Promise<Set<number>> {
  if (pids.length === 0) return new Set();
  const script = 'for p; do [ -e "/proc/$p/ns/net" ] && echo "$p"; done; exit 0';
  const result = await exec("sh", ["-c", script, "sh", ...new Set(pids.map(String))]);
  assertToolSuccess(result, "sh");
  return new Set(result.stdout.split("\n").filter(Boolean).map(Number));
}

/** A read whose tool is not installed counts as nothing there. */
async function optional<T>(read: Promise<T>): Promise<T | undefined> {
  try {
    return await read;
  } catch (error) {
    if (missingToolError(error)) return undefined;
    throw error;
  }
}
