/**
 * Pure inspection of netlock's nftables table.
 *
 * @module
 */

import type { LockRules } from "../common/types.ts";
import type { NftTableView } from "./view_parser.ts";

/**
 * Whether the table is exactly the lock: chains `input` and `output`, each a
 * filter base chain at priority 0 with policy drop holding one rule,
 * `meta mark MARK accept`, and nothing else.
 *
 * @example
 * ```ts
 * import { inspectNftLock } from "./lock_state.ts";
 * console.assert(inspectNftLock(null, { name: "NETLOCK", mark: 0xC114 }) === "unlocked");
 * ```
 *
 * @param view The `inet NAME` table, or `null` when it does not exist.
 * @param rules The table name and the mark.
 * @returns `locked`, `unlocked` (no table) or `partial` (a table that is not exactly the lock).
 */
export function inspectNftLock(
  view: NftTableView | null,
  rules: LockRules,
): "locked" | "unlocked" | "partial" {
  if (view === null) return "unlocked";
  const exact = view.otherObjects === 0 && view.chains.length === 2 && view.rules.length === 2 &&
    ["input", "output"].every((hook) => {
      const chain = view.chains.find((c) => c.name === hook);
      const chainRules = view.rules.filter((r) => r.chain === hook);
      return chain?.hook === hook && chain.type === "filter" && chain.prio === 0 &&
        chain.policy === "drop" && chainRules.length === 1 &&
        chainRules[0].markAccept === rules.mark;
    });
  return exact ? "locked" : "partial";
}
