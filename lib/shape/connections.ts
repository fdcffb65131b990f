/**
 * The shape of a connection lock in each backend: the chain `NAME-cPID`
 * jumped to from INPUT and OUTPUT, or the table `inet NAME-cPID`.
 *
 * @module
 */

import type { LockRules } from "../common/types.ts";
import type { LockShape } from "./shape.ts";
import { isNetlockTable } from "../nftables/lock_state.ts";
import type { Family } from "../common/types.ts";
import type { Connection, Listener } from "../connections/proc_net_parser.ts";
import { dropVerdict } from "../iptables/ruleset.ts";
import {
  connectionIptablesTree,
  connectionLockName,
  connectionSetElements,
  listenerSetElements,
  renderNftConnectionLock,
} from "../connections/ruleset.ts";

/**
 * The connection lock of a process. With `connections`, the lock must hold
 * exactly those (and `listeners`, whose SYNs it drops); without (unlock,
 * status), any connection lock of that process counts.
 *
 * @param name The lock name.
 * @param mark Packets with this mark pass.
 * @param pid The process.
 * @param connections Its connections, when locking.
 * @param listeners Its listeners, when locking (what a dump took).
 * @param queue The queue an iptables lock that holds sends what it stops
 *   to, instead of dropping it (nftables: no queue, it drops).
 * @returns The lock's shape for the backends.
 */
export function connectionShape(
  name: string,
  mark: number,
  pid: number,
  connections?: readonly Connection[],
  listeners: readonly Listener[] = [],
  queue?: number,
): LockShape {
  const table = connectionLockName(name, pid);
  let wanted: Record<string, string[]> | undefined;
  const bodies = new Map<Family, LockRules>();
  const sameElements = (have: string[] | undefined, want: string[]) =>
    (have ?? []).length === want.length && new Set([...(have ?? []), ...want]).size === want.length;
  return {
    name: table,
    iptablesRules(family) {
      let rules = bodies.get(family);
      if (!rules) {
        rules = connections
          ? {
            name: table,
            mark,
            ...connectionIptablesTree(
              connections,
              family,
              mark,
              table,
              listeners,
              dropVerdict(queue),
            ),
          }
          : { name: table, mark, body: "any" };
        bodies.set(family, rules);
      }
      return rules;
    },
    nftLock: {
      bulky: true,
      // Rendered only when used: 10,000 elements make a megabyte of script.
      create: () => renderNftConnectionLock(table, mark, connections ?? [], "create", listeners),
      replace: () => renderNftConnectionLock(table, mark, connections ?? [], "replace", listeners),
      inspect(view) {
        if (view === null) return "unlocked";
        if (!isNetlockTable(view, "connections")) return "foreign";
        // Opened by a restore (an accept ahead of the drops): no longer a lock.
        if (view.rules.some((rule) => rule.kind === "accept")) return "partial";
        if (!connections) return "locked";
        wanted ??= { ...connectionSetElements(connections), ...listenerSetElements(listeners) };
        const sets = wanted;
        // (A lock made before listeners were locked has no listener sets.)
        const exact = view.chains.length === 2 &&
          Object.keys(sets).every((set) => sameElements(view.sets[set], sets[set]));
        return exact ? "locked" : "partial";
      },
    },
    count(iptables, nftTable) {
      if (nftTable) return (nftTable.sets.conn4?.length ?? 0) + (nftTable.sets.conn6?.length ?? 0);
      return iptables.reduce((sum, state) => sum + state.connectionDrops / 2, 0);
    },
  };
}
