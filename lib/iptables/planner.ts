/**
 * The iptables planner: from the observed state of one family to the one
 * step that brings it to the wanted state. Pure: no I/O.
 *
 * @module
 */

import type { IptablesLockState } from "./lock_state.ts";
import type { LockRules } from "../common/types.ts";
import { renderIptablesChange } from "./ruleset.ts";

/** One `iptables-restore -w --noflush` (or `ip6tables-restore`) run with this input. */
export interface IptablesStep {
  /** The tool kind. */
  tool: "restore";
  /** The tool's stdin. */
  script: string;
}

/**
 * Plans a lock. A clean table gets the lock with `-N NAME` (so a concurrent
 * second lock fails as a whole instead of duplicating jumps); a partial lock
 * (duplicated jumps, a chain without jumps, foreign rules in the chain) is
 * repaired in the same single transaction.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { planIptablesLock } from "./planner.ts";
 * import { UNLOCKED_STATE } from "./lock_state.ts";
 *
 * const step = planIptablesLock(UNLOCKED_STATE, { name: "NETLOCK", mark: 0xC114 });
 * assert(step?.tool === "restore" && step.script.includes("-N NETLOCK"));
 * ```
 *
 * @param state The observed state of the family.
 * @param rules The lock's name and mark.
 * @returns The step, or `null` when the family is already locked.
 */
export function planIptablesLock(state: IptablesLockState, rules: LockRules): IptablesStep | null {
  if (state.status === "locked") return null;
  return {
    tool: "restore",
    script: renderIptablesChange(rules, {
      removeJumps: { input: state.inputJumps, output: state.outputJumps },
      chain: state.chainExists ? "flush" : "create",
      addLock: true,
      removeSubchains: state.subchains,
    }),
  };
}

/**
 * Plans an unlock through `iptables-restore`: delete every jump to the lock
 * chain, then the chain, in one transaction. (With iptables-nft and `nft`
 * available, the backend removes the lock through nft instead, so that the
 * table and base chains the lock created go too.)
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { planIptablesUnlock } from "./planner.ts";
 *
 * const step = planIptablesUnlock({
 *   status: "locked", chainExists: true, chainRulesMatch: true, chainRuleCount: 2, inputJumps: 1,
 *   outputJumps: 1, otherContent: false, flavour: "legacy", foreign: false, ipv4Only: false,
 *   subchains: [], connectionDrops: 0, listeners: [],
 * }, { name: "NETLOCK", mark: 0xC114 });
 * assert(step?.script.includes("-X NETLOCK"));
 * ```
 *
 * @param state The observed state of the family.
 * @param rules The lock's name.
 * @returns The step, or `null` when there is nothing to remove.
 */
export function planIptablesUnlock(
  state: IptablesLockState,
  rules: LockRules,
): IptablesStep | null {
  if (state.status === "unlocked") return null;
  return {
    tool: "restore",
    script: renderIptablesChange(rules, {
      removeJumps: { input: state.inputJumps, output: state.outputJumps },
      chain: state.chainExists ? "delete" : "keep",
      addLock: false,
      removeSubchains: state.subchains,
    }),
  };
}
