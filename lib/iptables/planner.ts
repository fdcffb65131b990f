/**
 * The iptables planner: from the observed state of one family to the one
 * step that brings it to the wanted state. Pure: no I/O.
 *
 * @module
 */

import type { IptablesLockState } from "./lock_state.ts";
import { type LockRules, renderIptablesChange } from "./ruleset.ts";

/** Where a step's script goes. */
export type IptablesStep =
  /** `iptables-restore -w --noflush` (or `ip6tables-restore`) with this input. */
  | { tool: "restore"; script: string }
  /** `nft -f -` with this input: drop the whole table the lock created. */
  | { tool: "nft"; script: string };

/**
 * Plans a lock. A clean table gets the lock with `-N NAME` (so a concurrent
 * second lock fails as a whole instead of duplicating jumps); a partial lock
 * (duplicated jumps, a chain without jumps, foreign rules in the chain) is
 * repaired in the same single transaction.
 *
 * @example
 * ```ts
 * import { planIptablesLock } from "./planner.ts";
 * import { UNLOCKED_STATE } from "./lock_state.ts";
 *
 * const step = planIptablesLock(UNLOCKED_STATE, { name: "NETLOCK", mark: 0xC114 });
 * console.assert(step?.tool === "restore" && step.script.includes("-N NETLOCK"));
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
    }),
  };
}

/**
 * Plans an unlock. When the table would be empty without the lock and
 * iptables is the nf_tables flavour, the step deletes the whole table
 * (iptables-nft created it for the lock; CRIU leaves it behind). Otherwise it
 * deletes every jump to the chain, then the chain.
 *
 * @example
 * ```ts
 * import { planIptablesUnlock } from "./planner.ts";
 *
 * const step = planIptablesUnlock({
 *   status: "locked", chainExists: true, chainRulesMatch: true, inputJumps: 1,
 *   outputJumps: 1, otherContent: false, flavour: "nf_tables",
 * }, { name: "NETLOCK", mark: 0xC114 }, { nftFamily: "ip", mayDeleteTable: true });
 * console.assert(step?.tool === "nft" && step.script === "delete table ip filter\n");
 * ```
 *
 * @param state The observed state of the family.
 * @param rules The lock's name.
 * @param options The nft family of the table and whether deleting it is allowed.
 * @returns The step, or `null` when there is nothing to remove.
 */
export function planIptablesUnlock(
  state: IptablesLockState,
  rules: LockRules,
  options: { nftFamily: "ip" | "ip6"; mayDeleteTable: boolean },
): IptablesStep | null {
  if (state.status === "unlocked") return null;
  if (options.mayDeleteTable && !state.otherContent && state.flavour === "nf_tables") {
    return { tool: "nft", script: `delete table ${options.nftFamily} filter\n` };
  }
  return {
    tool: "restore",
    script: renderIptablesChange(rules, {
      removeJumps: { input: state.inputJumps, output: state.outputJumps },
      chain: state.chainExists ? "delete" : "keep",
      addLock: false,
    }),
  };
}
