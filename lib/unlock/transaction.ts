/**
 * Removing locks through nf_tables: one transaction planned from one read
 * of the namespace's state (lib/unlock/state.ts), checked afterwards,
 * repeated against concurrent changes. Used by the unlock of every backend,
 * and so by the iptables backend's rollback.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { assertToolSuccess, type ToolExec } from "../exec/nsenter.ts";
import { type NftTableView, parseNftTableJson } from "../nftables/view_parser.ts";
import type { Family } from "../common/types.ts";
import { lockCandidates, type NameKind, planUnlock, type UnlockPlan } from "./plan.ts";
import { readNftState } from "./state.ts";

// Each failed transaction means another caller changed the state in between.
const MAX_ATTEMPTS = 12;

/** What to remove, and how to check it. */
export interface NftUnlockRequest {
  /** Which lock names (iptables chains and `inet` tables) to remove. */
  wanted: (name: string) => boolean;
  /** Also remove CRIU's own locks. */
  criu: boolean;
  /** Only these iptables families (default both). */
  families?: readonly Family[];
  /** `false`: leave the `inet` tables alone. */
  tables?: boolean;
  /**
   * Whether a lock is bulky (a connection lock: thousands of rules or set
   * elements). When the plan removes none, and no iptables lock seen in one
   * family only, nft's echo checks the transaction instead of a read-back.
   */
  bulky: (name: string) => boolean;
  /** What each name's lock looks like (default: a namespace lock). */
  kindOf?: NameKind;
  /** Report the transaction instead of applying it. */
  dryRun: boolean;
  /** Where a dry run reports. */
  log?: (line: string) => void;
}

/**
 * Removes what `request` names, starting from `state` (see
 * {@linkcode readNftState}). Only iptables locks are applied family by
 * family, so only they can be half-applied by a concurrent lock: after
 * removing one seen in a single family, the state is read back, and anything
 * of the lock still there is removed in another round; an unchanged state
 * means nft did nothing.
 * Otherwise, when no bulky lock goes, nft's echo checks the work: nft echoes
 * additions only, so an empty marker table is added and removed within the
 * same transaction. (Echoing a connection lock's ruleset would cost nft
 * 0.7 s of parsing: it is read back.)
 *
 * @param exec Runs a tool in the namespace.
 * @param state The namespace's nf_tables state.
 * @param request What to remove.
 * @returns What was removed, or `undefined` when there was nothing.
 */
export async function unlockThroughNft(
  exec: ToolExec,
  state: NftTableView,
  request: NftUnlockRequest,
): Promise<UnlockPlan | undefined> {
  const wanted = (name: string) => request.wanted(name) || (request.criu && name === "CRIU");
  const scope = { families: request.families, tables: request.tables };
  let removed: UnlockPlan | undefined;
  let tidied = false;
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const names = lockCandidates(state).filter(request.wanted);
    let plan = planUnlock(state, names, request.criu, scope, request.kindOf);
    // Read back after removing iptables locks: a filter table made for a
    // lock and left empty (another lock removed at the same time held it)
    // goes, once, at best (a change meanwhile leaves it).
    const tidying = plan.commands.length === 0 && !tidied && (removed?.iptables.length ?? 0) > 0;
    if (tidying) {
      tidied = true;
      plan = planUnlock(state, [], false, { ...scope, tidy: removed!.iptables }, request.kindOf);
      // Two unlocks at once read chains and rules in separate calls: one
      // may delete the base chains of a family and leave its table with no
      // chain at all, which a read of the chains cannot see.
      plan.commands.push(...await chainless(exec, state, request.families ?? ["ipv4", "ipv6"]));
    }
    if (plan.commands.length === 0) {
      // Nothing of netlock's, only a chain or table of the name someone else made.
      if (!removed && plan.foreign.length > 0) throw foreignError(plan.foreign);
      return removed;
    }
    // An iptables lock is applied family by family: a lock seen in one family
    // only may be a concurrent lock in flight, whose other family lands after
    // this read and is found by reading back. Seen in both families, nothing
    // of it can land later outside what this transaction deletes (a late
    // duplicate makes the chain deletion fail, and the whole is replanned).
    const halfSeen = plan.iptables.length === 1 || plan.criu.iptables.length > 0;
    const echo = !halfSeen && !plan.locks.some(request.bulky);
    // Named after a lock removed here, so it cannot be a name in use.
    const marker = `inet ${plan.locks[0] ?? "CRIU"}-unlock`;
    const script = `${plan.commands.join("\n")}\n` +
      (echo ? `add table ${marker}\ndelete table ${marker}\n` : "");
    if (request.dryRun) {
      request.log?.(`would run: nft -f - <<EOF\n${script}EOF`);
      return plan;
    }
    const result = await exec("nft", echo ? ["-e", "-f", "-"] : ["-f", "-"], script);
    const applied = result.success && !result.stdinClosedEarly;
    if (tidying) return removed;
    if (applied && echo) {
      if (!result.stdout.includes(`add table ${marker}`)) throw didNothing();
      return mergePlans(removed, plan);
    }
    const next = await readNftState(exec, { wanted, bulky: request.bulky });
    if (!next) return removed;
    const unchanged = JSON.stringify(next) === JSON.stringify(state);
    if (applied) {
      if (unchanged) throw didNothing();
      removed = mergePlans(removed, plan);
    } else if (unchanged) {
      assertToolSuccess(result, "nft");
    }
    state = next;
  }
  throw new NetlockError(
    "CONFLICT",
    `the rules kept changing under concurrent callers; gave up after ${MAX_ATTEMPTS} attempts`,
  );
}

/**
 * The refusal when the only chains or tables of the lock's name are not
 * netlock's.
 *
 * @param what Their descriptions.
 * @returns The error.
 */
export function foreignError(what: string[]): NetlockError {
  const others = what.length > 1 ? ` (nor is ${what.slice(1).join(", ")})` : "";
  return new NetlockError(
    "NAME_IN_USE",
    `${what[0]} is not a netlock lock${others}: it holds, or is used by, what netlock never ` +
      "makes; netlock leaves it alone: give the lock another --name",
  );
}

/**
 * `delete table` for each touched family's filter table that exists with
 * nothing in it at all (no chain, set or other object): what two unlocks
 * at once may leave, and what a read of the chains cannot see.
 */
async function chainless(
  exec: ToolExec,
  state: NftTableView,
  families: readonly Family[],
): Promise<string[]> {
  const unseen = families.map((family) => family === "ipv4" ? "ip" : "ip6")
    .filter((table) => !state.chains.some((c) => c.family === table && c.table === "filter"));
  const listed = await Promise.all(
    unseen.map((table) => exec("nft", ["-j", "list", "table", table, "filter"])),
  );
  return unseen.filter((_, i) => {
    if (!listed[i].success) return false;
    try {
      const view = parseNftTableJson(listed[i].stdout);
      return view.chains.length === 0 && view.rules.length === 0 && view.otherObjects === 0;
    } catch {
      return false;
    }
  }).map((table) => `delete table ${table} filter`);
}

function didNothing(): NetlockError {
  return new NetlockError("TOOL_FAILED", "nft exited with code 0 but did not apply the unlock");
}

function mergePlans(a: UnlockPlan | undefined, b: UnlockPlan): UnlockPlan {
  if (!a) return b;
  const union = <T>(x: T[], y: T[]) => [...new Set([...x, ...y])];
  return {
    commands: [...a.commands, ...b.commands],
    iptables: union(a.iptables, b.iptables),
    nftables: a.nftables || b.nftables,
    locks: union(a.locks, b.locks),
    criu: {
      iptables: union(a.criu.iptables, b.criu.iptables),
      nftables: union(a.criu.nftables, b.criu.nftables),
    },
    foreign: union(a.foreign, b.foreign),
  };
}
