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
  /** Whether netlock's `inet` table is there. */
  nftables: boolean;
  /** CRIU's leftovers being removed (with `criu`). */
  criu: { iptables: Family[]; nftables: string[] };
}

const FAMILIES: [Family, "ip" | "ip6"][] = [["ipv4", "ip"], ["ipv6", "ip6"]];

/**
 * Plans the removal of the lock named `name` (chain `NAME` in `ip filter` and
 * `ip6 filter`, table `inet NAME`) and, with `criu`, of CRIU's own locks
 * (chain `CRIU`, tables `inet CRIU-*`).
 *
 * @example
 * ```ts
 * import { planUnlock } from "./unlock_plan.ts";
 *
 * const plan = planUnlock({
 *   family: "", chains: [], rules: [], otherObjects: 0, sets: {},
 *   tables: [{ family: "inet", name: "NETLOCK" }],
 * }, "NETLOCK", false);
 * console.assert(plan.commands[0] === "delete table inet NETLOCK" && plan.nftables);
 * ```
 *
 * @param state Every table, chain and INPUT/OUTPUT rule (`parseNftTableJson` with `allTables`).
 * @param name The lock's name (chain and table).
 * @param criu Also remove CRIU's locks.
 * @param scope Only these iptables families (default both); `tables: false`
 *   leaves the `inet` tables alone (an iptables backend's own rollback).
 * @returns The commands and what they remove.
 */
export function planUnlock(
  state: NftTableView,
  name: string,
  criu: boolean,
  scope: { families?: readonly Family[]; tables?: boolean } = {},
): UnlockPlan {
  const plan: UnlockPlan = {
    commands: [],
    iptables: [],
    nftables: false,
    criu: { iptables: [], nftables: [] },
  };
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
    const names = [name, ...(criu ? ["CRIU"] : [])];
    plan.commands.push(...planNftUnlockCommands(view, names));
    if (view.chains.some((chain) => chain.name === name)) plan.iptables.push(family);
    if (criu && view.chains.some((chain) => chain.name === "CRIU")) plan.criu.iptables.push(family);
  }
  for (const table of scope.tables === false ? [] : state.tables ?? []) {
    if (table.family !== "inet") continue;
    if (table.name === name) plan.nftables = true;
    else if (criu && isCriuNftTable(table)) plan.criu.nftables.push(table.name);
    else continue;
    plan.commands.push(`delete table inet ${table.name}`);
  }
  return plan;
}
