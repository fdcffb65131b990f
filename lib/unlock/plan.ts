/**
 * The unlock of every backend as ONE nft transaction, planned from one read
 * of the namespace's nf_tables state. Pure: no I/O.
 *
 * With iptables-nft (the usual flavour), an iptables lock is nf_tables
 * objects too, so netlock's lock in either backend — and CRIU's leftovers
 * with `--criu` — go away in a single all-or-nothing transaction, removing
 * exactly what the locks created. Also: which names are netlock's locks.
 *
 * @module
 */

import { processLockOf } from "../connections/ruleset.ts";
import { isCriuNftTable } from "./criu_locks.ts";
import { type NftTableView, type RuleKind, tableView } from "../nftables/view_parser.ts";
import { isNetlockTable } from "../nftables/lock_state.ts";
import type { Family, LockKind } from "../common/types.ts";

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
  /**
   * Chains and tables of a lock's name that are not netlock locks: left
   * alone, and named here (`chain NAME of table ip filter`, `table inet NAME`).
   */
  foreign: string[];
}

/** What a chain or table of this name must look like to be netlock's. */
export type NameKind = (name: string) => LockKind;

const FAMILIES: [Family, "ip" | "ip6"][] = [["ipv4", "ip"], ["ipv6", "ip6"]];

/**
 * Plans the removal of the locks named `names` (chain `NAME` in `ip filter`
 * and `ip6 filter`, table `inet NAME`) and, with `criu`, of CRIU's own locks
 * (chain `CRIU`, tables `inet CRIU-*`). All in one transaction.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { planUnlock } from "./plan.ts";
 *
 * const plan = planUnlock({
 *   family: "", otherObjects: 0, sets: {},
 *   tables: [{ family: "inet", name: "NETLOCK" }],
 *   chains: [{ family: "inet", table: "NETLOCK", name: "input", handle: 1, hook: "input", type: "filter" }],
 *   rules: [{ family: "inet", table: "NETLOCK", chain: "input", handle: 2, kind: "markAccept", markAccept: 0xC114 }],
 * }, ["NETLOCK"], false);
 * assert.deepEqual(plan.commands, ["delete table inet NETLOCK"]);
 * assert.equal(plan.nftables, true);
 * ```
 *
 * @param state Every table, chain and INPUT/OUTPUT rule (`parseNftTableJson` with `allTables`).
 * @param names The locks' names (chains and tables).
 * @param criu Also remove CRIU's locks.
 * @param scope Only these iptables families (default both); `tables: false`
 *   leaves the `inet` tables alone (an iptables backend's own rollback).
 * @param kindOf What each name's lock looks like (default: a namespace lock);
 *   a chain or table of the name that does not look so is left alone.
 * @returns The commands and what they remove.
 */
export function planUnlock(
  state: NftTableView,
  names: readonly string[],
  criu: boolean,
  scope: { families?: readonly Family[]; tables?: boolean; tidy?: readonly Family[] } = {},
  kindOf: NameKind = () => "netns",
): UnlockPlan {
  const plan: UnlockPlan = {
    commands: [],
    iptables: [],
    nftables: false,
    locks: [],
    criu: { iptables: [], nftables: [] },
    foreign: [],
  };
  const found = new Set<string>();
  for (const [family, nftFamily] of FAMILIES) {
    if (scope.families && !scope.families.includes(family)) continue;
    const view = tableView(state, nftFamily, "filter");
    const rulesKnown = (chain: string) =>
      state.rulesOf === "all" || (state.rulesOf?.has(`${nftFamily} filter ${chain}`) ?? false);
    const present = names.filter((name) => view.chains.some((chain) => chain.name === name));
    const ours = present.filter((name) => {
      if (isNetlockChain(view, name, kindOf(name), rulesKnown(name))) return true;
      plan.foreign.push(`chain ${name} of table ${nftFamily} filter`);
      return false;
    });
    plan.commands.push(
      ...planNftUnlockCommands(
        view,
        [...ours, ...(criu ? ["CRIU"] : [])],
        scope.tidy?.includes(family) ?? false,
      ),
    );
    for (const name of ours) found.add(name);
    if (ours.length > 0) plan.iptables.push(family);
    if (criu && view.chains.some((chain) => chain.name === "CRIU")) plan.criu.iptables.push(family);
  }
  for (const table of scope.tables === false ? [] : state.tables ?? []) {
    if (table.family !== "inet") continue;
    if (names.includes(table.name)) {
      if (!isNetlockTable(tableView(state, "inet", table.name), kindOf(table.name))) {
        plan.foreign.push(`table inet ${table.name}`);
        continue;
      }
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
 * Whether a chain of a lock's name in a family's filter table is a netlock
 * lock: nothing but plain jumps from INPUT and OUTPUT refers to it, and,
 * where its rules were read, it holds only a lock's rules and is not an
 * empty chain nothing jumps to; where they were not (a connection lock's,
 * too many to read), something jumps to it. Pure.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isNetlockChain } from "./plan.ts";
 *
 * const view = {
 *   family: "ip", otherObjects: 0, sets: {},
 *   chains: [{ name: "NETLOCK", handle: 1 }],
 *   rules: [{ chain: "NETLOCK", handle: 2, kind: "other" as const }],
 * };
 * assert.equal(isNetlockChain(view, "NETLOCK", "netns", true), false);
 * ```
 *
 * @param view The family's filter table.
 * @param name The chain.
 * @param kind The kind of lock its name says it is.
 * @param rulesKnown Whether `view` holds the chain's own rules.
 * @returns `true` when it is netlock's.
 */
export function isNetlockChain(
  view: NftTableView,
  name: string,
  kind: LockKind,
  rulesKnown: boolean,
): boolean {
  const jumps = view.rules.filter((rule) => rule.jumpsTo === name);
  const plainFromHooks = jumps.every((rule) =>
    (rule.chain === "INPUT" || rule.chain === "OUTPUT") && rule.plainJumpTo === name
  );
  if (!plainFromHooks) return false;
  // A lock's chain always has its jumps (they come and go in its own
  // transactions); a connection lock's thousands of rules are not read.
  if (!rulesKnown) return jumps.length > 0;
  // A connection lock's chain: its marked return and drops (an earlier
  // netlock's: unmarked drops), jumps into its own tree of chains (NAME.ID);
  // either lock's chain: the bare return at its head that opens it.
  const allowed: RuleKind[] = kind === "netns"
    ? ["markAccept", "drop", "marker", "return"]
    : ["markedReturn", "matchedDrop", "unmarkedDrop", "return"];
  const own = view.rules.filter((rule) => rule.chain === name);
  const ours = (rule: NftTableView["rules"][number]) =>
    allowed.includes(rule.kind) ||
    (kind !== "netns" && (rule.jumpsTo ?? "").startsWith(`${name}.`));
  return own.every(ours) && (own.length > 0 || jumps.length > 0);
}

/**
 * Every lock of netlock's named `name` in a namespace's nf_tables state: the
 * namespace lock `NAME` and the connection locks `NAME-cPID`, as iptables
 * chains (`ip`/`ip6 filter`) or `inet` tables. Pure.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { lockNamesIn } from "./plan.ts";
 *
 * const names = lockNamesIn({
 *   family: "", rules: [], otherObjects: 0, sets: {},
 *   chains: [{ family: "ip", table: "filter", name: "NETLOCK-c42", handle: 1 }],
 *   tables: [{ family: "inet", name: "NETLOCK" }, { family: "inet", name: "other" }],
 * }, "NETLOCK");
 * assert(names.join() === "NETLOCK-c42,NETLOCK");
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
 * import assert from "node:assert/strict";
 * import { lockCandidates } from "./plan.ts";
 *
 * const names = lockCandidates({
 *   family: "", rules: [], otherObjects: 0, sets: {},
 *   chains: [{ family: "ip", table: "filter", name: "INPUT", handle: 1 }],
 *   tables: [{ family: "inet", name: "NETLOCK" }],
 * });
 * assert(names.join() === "INPUT,NETLOCK");
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
 * import assert from "node:assert/strict";
 * import { isLockName } from "./plan.ts";
 * assert(isLockName("NETLOCK-c42", "NETLOCK") && !isLockName("NETLOCKS", "NETLOCK"));
 * ```
 *
 * @param candidate A chain or table name.
 * @param name The lock name.
 * @returns `true` for netlock's locks.
 */
export function isLockName(candidate: string, name: string): boolean {
  return candidate === name || processLockOf(candidate, name) !== undefined;
}

// The iptables-nft part: one family's filter table.

/**
 * Whether a family's table holds netlock's lock chain.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { hasLockChain } from "./plan.ts";
 * assert(!hasLockChain(null, "NETLOCK"));
 * ```
 *
 * @param view The table, or `null` when it does not exist.
 * @param name The lock chain's name.
 * @returns `true` when the chain is there.
 */
export function hasLockChain(view: NftTableView | null, name: string): boolean {
  return view?.chains.some((chain) => chain.name === name) ?? false;
}

/**
 * The nft commands that remove the lock from one family's filter table: the
 * `-j NAME` rules of INPUT and OUTPUT (by handle), the lock chain, the empty
 * accept-policy base chains the lock created (handle above the lock chain's,
 * or, once nothing else is left in the table, not the table's first object),
 * and the table itself when nothing else is left in it. Deleting a chain
 * that gained a rule since it was read fails, so a concurrent change aborts
 * the whole transaction instead of being lost.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { planNftUnlockCommands } from "./plan.ts";
 *
 * const commands = planNftUnlockCommands({
 *   family: "ip", otherObjects: 0, sets: {},
 *   chains: [
 *     { name: "NETLOCK", handle: 1 },
 *     { name: "INPUT", handle: 2, hook: "input", policy: "accept" },
 *   ],
 *   rules: [
 *     { chain: "INPUT", handle: 3, kind: "jump", plainJumpTo: "NETLOCK", jumpsTo: "NETLOCK" },
 *     { chain: "NETLOCK", handle: 4, kind: "drop" },
 *   ],
 * }, "NETLOCK");
 * assert(commands.join("\n") === [
 *   "delete rule ip filter INPUT handle 3",
 *   "flush chain ip filter NETLOCK",
 *   "delete chain ip filter NETLOCK",
 *   "delete chain ip filter INPUT",
 *   "delete table ip filter",
 * ].join("\n"));
 * ```
 *
 * With `tidy` (the caller just removed a lock from this table), a table
 * left with no lock chain at all but made for a lock (see below) goes too:
 * two locks removed at once each see the other's chain and leave the table.
 * Its base chains are deleted one by one before it, so that a lock that
 * lands meanwhile (a jump in INPUT) makes the whole transaction fail.
 *
 * @param view The family's filter table as nft lists it.
 * @param names The lock chains' names (netlock's, and CRIU's with `--criu`).
 * @param tidy Remove a table made for a lock even when no lock chain is left in it.
 * @returns The commands, in order; empty when there is no lock chain (nor table to tidy).
 */
export function planNftUnlockCommands(
  view: NftTableView,
  names: string | string[],
  tidy = false,
): string[] {
  const wanted = new Set(typeof names === "string" ? [names] : names);
  // A lock's chain, and the chains of its tree (`NAME.ID`, a connection lock's).
  const ofLock = (chain: string) => {
    const dot = chain.lastIndexOf(".");
    return wanted.has(chain) || (dot > 0 && wanted.has(chain.slice(0, dot)));
  };
  const lockChains = view.chains.filter((chain) => ofLock(chain.name));
  if (!lockChains.some((chain) => wanted.has(chain.name)) && !(tidy && lockChains.length === 0)) {
    return [];
  }
  const present = new Set(lockChains.map((chain) => chain.name));
  const oldest = lockChains.length
    ? Math.min(...lockChains.map((chain) => chain.handle))
    : Infinity;
  const table = `${view.family} filter`;
  const jumps = view.rules.filter((rule) =>
    (rule.chain === "INPUT" || rule.chain === "OUTPUT") && rule.plainJumpTo !== undefined &&
    present.has(rule.plainJumpTo)
  );
  const commands = jumps.map((rule) => `delete rule ${table} ${rule.chain} handle ${rule.handle}`);
  // The tree's chains refer to each other: all flushed, then all deleted.
  commands.push(...lockChains.map((chain) => `flush chain ${table} ${chain.name}`));
  commands.push(...lockChains.map((chain) => `delete chain ${table} ${chain.name}`));
  const removedRules = new Set(jumps.map((rule) => rule.handle));
  const remainingRules = view.rules.filter((rule) =>
    !present.has(rule.chain) && !removedRules.has(rule.handle)
  );
  const emptyAcceptBase = (chain: NftTableView["chains"][number]) =>
    (chain.name === "INPUT" || chain.name === "OUTPUT") && chain.policy === "accept" &&
    !remainingRules.some((rule) => rule.chain === chain.name);
  // The lock that created the base chains may be gone already (removed
  // while another lock was there): a table left with nothing but empty
  // accept-policy INPUT/OUTPUT chains, none of them the table's first object
  // (handle 1, which a table made for a user's own rule starts with), was
  // made for a lock.
  const leftovers = view.chains.filter((chain) => !present.has(chain.name));
  const madeForALock = view.otherObjects === 0 && leftovers.every(emptyAcceptBase) &&
    leftovers.every((chain) => chain.handle > 1);
  const createdByLock = view.chains.filter((chain) =>
    emptyAcceptBase(chain) && (chain.handle > oldest || madeForALock)
  );
  // Tidying: the whole table made for a lock, or nothing.
  if (lockChains.length === 0 && (!madeForALock || leftovers.length === 0)) return [];
  for (const chain of createdByLock) commands.push(`delete chain ${table} ${chain.name}`);
  const remainingChains = view.chains.length - lockChains.length - createdByLock.length;
  if (remainingChains === 0 && view.otherObjects === 0) commands.push(`delete table ${table}`);
  return commands;
}
