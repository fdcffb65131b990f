/**
 * Pure inspection of netlock's nftables tables: is a table exactly the lock,
 * a lock in need of repair, or not a netlock lock at all.
 *
 * @module
 */

import type { LockRules } from "../common/types.ts";
import type { NftTableView, RuleKind } from "./view_parser.ts";

/** The sets a connection lock's table may hold. */
const CONNECTION_SETS = new Set(["conn4", "conn6", "listen4", "listen6", "listenany"]);

/** The state of a lock's table: `foreign` is a table of that name netlock did not make. */
export type NftLockState = "locked" | "unlocked" | "partial" | "foreign";

/**
 * Whether a table is a netlock lock of the given kind, whole or in need of
 * repair: a namespace lock holds base chains `input`/`output` (type filter,
 * on the hook of their name) and `meta mark MARK accept` rules; a connection
 * lock holds the sets `conn4`/`conn6` (and, since listeners are locked,
 * `listen4`/`listen6`/`listenany`), such chains, and drops of unmarked
 * packets; a cgroup lock, such chains and drops of unmarked packets (and,
 * once a restore opened it, bare accepts ahead of them). An empty table, or
 * one holding anything else, is someone else's.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isNetlockTable } from "./lock_state.ts";
 *
 * const user = {
 *   family: "inet", otherObjects: 0, sets: {},
 *   chains: [{ name: "input", handle: 1, hook: "input", type: "filter" }],
 *   rules: [{ chain: "input", handle: 2, kind: "other" as const }],
 * };
 * assert.equal(isNetlockTable(user, "netns"), false);
 * ```
 *
 * @param view The table.
 * @param kind The kind of lock its name says it is.
 * @returns `true` when it is netlock's.
 */
export function isNetlockTable(
  view: NftTableView,
  kind: "netns" | "connections" | "cgroup",
): boolean {
  const sets = Object.keys(view.sets);
  const ruleKind: RuleKind = kind === "netns" ? "markAccept" : "unmarkedDrop";
  const objectsOk = kind !== "connections"
    ? view.otherObjects === 0
    : view.otherObjects === sets.length && sets.every((set) => CONNECTION_SETS.has(set));
  return objectsOk && view.chains.length > 0 &&
    view.chains.every((chain) =>
      (chain.name === "input" || chain.name === "output") && chain.hook === chain.name &&
      chain.type === "filter"
    ) &&
    view.rules.every((rule) => rule.kind === ruleKind || rule.kind === "accept") &&
    // An accept opens a lock's drops: alone, it is not a lock.
    (!view.rules.some((rule) => rule.kind === "accept") ||
      view.rules.some((rule) => rule.kind === ruleKind));
}

/**
 * Whether the table is exactly the lock: chains `input` and `output`, each a
 * filter base chain at priority 0 with policy drop holding one rule,
 * `meta mark MARK accept`, and nothing else (with `anyMark`, any mark).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspectNftLock } from "./lock_state.ts";
 *
 * assert.equal(inspectNftLock(null, { name: "NETLOCK", mark: 0xC114 }), "unlocked");
 * ```
 *
 * @param view The `inet NAME` table, or `null` when it does not exist.
 * @param rules The table name and the mark.
 * @returns `locked`, `unlocked` (no table), `partial` (a netlock lock that is
 *   not exactly the lock) or `foreign` (not a netlock lock).
 */
export function inspectNftLock(view: NftTableView | null, rules: LockRules): NftLockState {
  if (view === null) return "unlocked";
  if (!isNetlockTable(view, "netns")) return "foreign";
  const mark = nftLockMark(view);
  const exact = view.chains.length === 2 && view.rules.length === 2 && mark !== undefined &&
    (rules.anyMark || mark === rules.mark) &&
    ["input", "output"].every((hook) => {
      const chain = view.chains.find((c) => c.name === hook);
      const chainRules = view.rules.filter((r) => r.chain === hook);
      return chain?.prio === 0 && chain.policy === "drop" && chainRules.length === 1 &&
        chainRules[0].markAccept === mark;
    });
  return exact ? "locked" : "partial";
}

/**
 * The mark a namespace lock's table lets through: the mark of its first
 * `meta mark MARK accept` rule.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { nftLockMark } from "./lock_state.ts";
 *
 * assert.equal(nftLockMark({
 *   family: "inet", otherObjects: 0, sets: {}, chains: [],
 *   rules: [{ chain: "input", handle: 2, kind: "markAccept", markAccept: 0x10 }],
 * }), 0x10);
 * ```
 *
 * @param view The table.
 * @returns The mark, if any.
 */
export function nftLockMark(view: NftTableView): number | undefined {
  return view.rules.find((rule) => rule.markAccept !== undefined)?.markAccept;
}
