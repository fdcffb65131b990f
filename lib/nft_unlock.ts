/**
 * Removing a lock through nf_tables: one read of the namespace's state, one
 * transaction, checked afterwards, repeated against concurrent changes. Used
 * by the unlock of every backend, and by the iptables backend's rollback.
 *
 * @module
 */

import { NetlockError } from "./errors.ts";
import { assertToolSuccess, type ToolExec, toolMissing } from "./nsenter.ts";
import { type NftTableView, parseNftTableJson } from "./nft_view_parser.ts";
import type { RunResult } from "./runner.ts";
import type { Family } from "./types.ts";
import { lockCandidates, planUnlock, type UnlockPlan } from "./unlock_plan.ts";

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
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const names = lockCandidates(state).filter(request.wanted);
    const plan = planUnlock(state, names, request.criu, scope);
    if (plan.commands.length === 0) return removed;
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
    if (applied && echo) {
      if (!result.stdout.includes(`add table ${marker}`)) throw didNothing();
      return mergePlans(removed, plan);
    }
    const next = await readNftState(exec, wanted);
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
 * Everything the unlock needs from nf_tables, without listing a lock's own
 * rules or set elements (tens of thousands for a connection lock, seconds of
 * nft time): the chains of every table, then the rules of the INPUT/OUTPUT
 * chains of the filter tables that hold one of `names`. A namespace lock's
 * whole ruleset, when it was already read (`ruleset`), holds all of it.
 * `undefined` when nft is not installed.
 *
 * @param exec Runs a tool in the namespace.
 * @param wanted Which lock chains to look for.
 * @param ruleset `nft -t -j list ruleset`, read already.
 * @returns The state, with every table, chain and the INPUT/OUTPUT rules.
 */
export async function readNftState(
  exec: ToolExec,
  wanted: (name: string) => boolean,
  ruleset?: Promise<RunResult>,
): Promise<NftTableView | undefined> {
  if (ruleset) {
    const whole = await ruleset;
    if (toolMissing(whole)) return undefined;
    assertToolSuccess(whole, "nft");
    const state = parseNftTableJson(whole.stdout, { allTables: true });
    state.tables ??= [];
    return state;
  }
  const listed = await exec("nft", ["-j", "list", "chains"]);
  if (toolMissing(listed)) return undefined;
  assertToolSuccess(listed, "nft");
  const state = parseNftTableJson(listed.stdout, { allTables: true });
  const tables = new Map(
    state.chains.map((c) => [`${c.family} ${c.table}`, { family: c.family!, name: c.table! }]),
  );
  state.tables = [...tables.values()];
  const hooks = state.chains.filter((chain) =>
    chain.table === "filter" && (chain.name === "INPUT" || chain.name === "OUTPUT") &&
    state.chains.some((c) => c.family === chain.family && c.table === "filter" && wanted(c.name))
  );
  const listings = await Promise.all(
    hooks.map((chain) => exec("nft", ["-j", "list", "chain", chain.family!, "filter", chain.name])),
  );
  for (const result of listings) {
    // A chain deleted meanwhile: the transaction planned from this read fails and is replanned.
    if (!result.success && /No such file or directory/.test(result.stderr)) continue;
    assertToolSuccess(result, "nft");
    state.rules.push(...parseNftTableJson(result.stdout, { allTables: true }).rules);
  }
  return state;
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
  };
}
