/**
 * The unlock of every backend as ONE nft transaction, planned from one read
 * of the namespace's nf_tables state. Pure: no I/O.
 *
 * With iptables-nft (the usual flavour), an iptables lock is nf_tables
 * objects too, so netlock's lock in either backend — and CRIU's leftovers
 * with `--criu` — go away in a single all-or-nothing transaction.
 *
 * @module
 */

import { connectionLockPid } from "./connections/ruleset.ts";
import { isCriuNftTable } from "./criu_locks.ts";
import { planNftUnlockCommands } from "./iptables/nft_unlock_planner.ts";
import type { NftTableView } from "./nft_view_parser.ts";
import type { Family } from "./types.ts";

/** What to remove, and what that is. */
export interface UnlockPlan {
  /** The `nft -f -` commands; empty when there is nothing to remove. */
  commands: string[];
  /** Families whose iptables filter table holds netlock's lock chain. */
  iptables: Family[];
  /** Whether one of netlock's `inet` tables is there. */
  nftables: boolean;
  /** The lock names found (as an iptables chain or an `inet` table). */
  locks: string[];
  /** CRIU's leftovers being removed (with `criu`). */
  criu: { iptables: Family[]; nftables: string[] };
}

const FAMILIES: [Family, "ip" | "ip6"][] = [["ipv4", "ip"], ["ipv6", "ip6"]];

/**
 * Plans the removal of the locks named `names` (chain `NAME` in `ip filter`
 * and `ip6 filter`, table `inet NAME`) and, with `criu`, of CRIU's own locks
 * (chain `CRIU`, tables `inet CRIU-*`). All in one transaction.
 *
 * @example
 * ```ts
 * import { planUnlock } from "./unlock_plan.ts";
 *
 * const plan = planUnlock({
 *   family: "", chains: [], rules: [], otherObjects: 0, sets: {},
 *   tables: [{ family: "inet", name: "NETLOCK" }],
 * }, ["NETLOCK"], false);
 * console.assert(plan.commands[0] === "delete table inet NETLOCK" && plan.nftables);
 * ```
 *
 * @param state Every table, chain and INPUT/OUTPUT rule (`parseNftTableJson` with `allTables`).
 * @param names The locks' names (chains and tables).
 * @param criu Also remove CRIU's locks.
 * @param scope Only these iptables families (default both); `tables: false`
 *   leaves the `inet` tables alone (an iptables backend's own rollback).
 * @returns The commands and what they remove.
 */
export function planUnlock(
  state: NftTableView,
  names: readonly string[],
  criu: boolean,
  scope: { families?: readonly Family[]; tables?: boolean } = {},
): UnlockPlan {
  const plan: UnlockPlan = {
    commands: [],
    iptables: [],
    nftables: false,
    locks: [],
    criu: { iptables: [], nftables: [] },
  };
  const found = new Set<string>();
  for (const [family, nftFamily] of FAMILIES) {
    if (scope.families && !scope.families.includes(family)) continue;
    const inTable = <T extends { family?: string; table?: string }>(item: T) =>
      item.family === nftFamily && item.table === "filter";
    const view: NftTableView = {
      family: nftFamily,
      chains: state.chains.filter(inTable),
      rules: state.rules.filter(inTable),
      otherObjects: 0,
      sets: {},
    };
    plan.commands.push(...planNftUnlockCommands(view, [...names, ...(criu ? ["CRIU"] : [])]));
    const ours = view.chains.filter((chain) => names.includes(chain.name));
    for (const chain of ours) found.add(chain.name);
    if (ours.length > 0) plan.iptables.push(family);
    if (criu && view.chains.some((chain) => chain.name === "CRIU")) plan.criu.iptables.push(family);
  }
  for (const table of scope.tables === false ? [] : state.tables ?? []) {
    if (table.family !== "inet") continue;
    if (names.includes(table.name)) {
      plan.nftables = true;
      found.add(table.name);
    } else if (criu && isCriuNftTable(table)) plan.criu.nftables.push(table.name);
    else continue;
    plan.commands.push(`delete table inet ${table.name}`);
  }
  plan.locks = names.filter((name) => found.has(name));
  return plan;
}

/**
 * Every lock of netlock's named `name` in a namespace's nf_tables state: the
 * namespace lock `NAME` and the connection locks `NAME-cPID`, as iptables
 * chains (`ip`/`ip6 filter`) or `inet` tables. Pure.
 *
 * @example
 * ```ts
 * import { lockNamesIn } from "./unlock_plan.ts";
 *
 * const names = lockNamesIn({
 *   family: "", rules: [], otherObjects: 0, sets: {},
 *   chains: [{ family: "ip", table: "filter", name: "NETLOCK-c42", handle: 1 }],
 *   tables: [{ family: "inet", name: "NETLOCK" }, { family: "inet", name: "other" }],
 * }, "NETLOCK");
 * console.assert(names.join() === "NETLOCK-c42,NETLOCK");
 * ```
 *
 * @param state Every table and chain (`parseNftTableJson` with `allTables`).
 * @param name The lock name.
 * @returns The lock names found, each once.
 */
export function lockNamesIn(state: NftTableView, name: string): string[] {
  return lockCandidates(state).filter((candidate) => isLockName(candidate, name));
}

/**
 * The names a lock can have in a namespace's nf_tables state: the chains of
 * the `ip` and `ip6` filter tables and the `inet` tables, each once. Pure.
 *
 * @example
 * ```ts
 * import { lockCandidates } from "./unlock_plan.ts";
 *
 * const names = lockCandidates({
 *   family: "", rules: [], otherObjects: 0, sets: {},
 *   chains: [{ family: "ip", table: "filter", name: "INPUT", handle: 1 }],
 *   tables: [{ family: "inet", name: "NETLOCK" }],
 * });
 * console.assert(names.join() === "INPUT,NETLOCK");
 * ```
 *
 * @param state Every table and chain (`parseNftTableJson` with `allTables`).
 * @returns The names.
 */
export function lockCandidates(state: NftTableView): string[] {
  return [
    ...new Set([
      ...state.chains
        .filter((chain) =>
          (chain.family === "ip" || chain.family === "ip6") && chain.table === "filter"
        )
        .map((chain) => chain.name),
      ...(state.tables ?? []).filter((table) => table.family === "inet").map((table) => table.name),
    ]),
  ];
}

/**
 * Whether `candidate` names one of netlock's locks called `name`: the
 * namespace lock itself, or a connection lock `NAME-cPID`.
 *
 * @example
 * ```ts
 * import { isLockName } from "./unlock_plan.ts";
 * console.assert(isLockName("NETLOCK-c42", "NETLOCK") && !isLockName("NETLOCKS", "NETLOCK"));
 * ```
 *
 * @param candidate A chain or table name.
 * @param name The lock name.
 * @returns `true` for netlock's locks.
 */
export function isLockName(candidate: string, name: string): boolean {
  return candidate === name || connectionLockPid(candidate, name) !== undefined;
}
