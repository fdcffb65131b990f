/**
 * The iptables backend: applies the planner's steps to each family through
 * the target's `iptables-restore` / `ip6tables-restore`, families in
 * parallel, with retries under concurrency and rollback on failure.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { GuardRefusal, stoppedBeforeTool } from "../netns/guard.ts";
import { assertToolSuccess, type ToolExec, toolMissing } from "../exec/nsenter.ts";
import type { RunResult } from "../exec/runner.ts";
import type { Family } from "../common/types.ts";
import {
  inspectIptablesLock,
  type IptablesLockState,
  sameLockState,
  UNLOCKED_STATE,
} from "./lock_state.ts";
import { type IptablesStep, planIptablesLock, planIptablesUnlock } from "./planner.ts";
import type { LockRules } from "../common/types.ts";
import { parseIptablesSave, type SavedTable } from "./save_parser.ts";

/** Everything the backend needs for one target. */
export interface IptablesContext {
  /** Runs a tool in the target's namespace. */
  exec: ToolExec;
  /** The lock's name and mark. */
  rules: LockRules;
  /** The rules per family, when they differ (connection locks); else `rules`. */
  rulesFor?: (family: Family) => LockRules;
  /** The families to act on. */
  families: Family[];
  /** Log the steps instead of applying them. */
  dryRun: boolean;
  /** Where dry-run steps are reported. */
  log?: (line: string) => void;
  /**
   * Runs the rollback's tools: with at least the default timeout, so that a
   * short `--timeout` cannot leave a failed lock half-applied.
   */
  rollbackExec?: ToolExec;
}

/** A family's iptables tools and its nf_tables family. */
export interface FamilyTools {
  restore: string;
  save: string;
  nftFamily: "ip" | "ip6";
}

/** Each family's iptables tools and nf_tables family. */
export const FAMILY_TOOLS: Record<Family, FamilyTools> = {
  ipv4: { restore: "iptables-restore", save: "iptables-save", nftFamily: "ip" },
  ipv6: { restore: "ip6tables-restore", save: "ip6tables-save", nftFamily: "ip6" },
};

// Each failed attempt means another caller changed the table in between, so
// this bounds how many concurrent changes one call waits out.
const MAX_ATTEMPTS = 12;
// How many times a family may be applied and then found absent before the
// tool, not a race, is blamed.
const SUSPECT_LIMIT = 5;

/**
 * Locks every family of the context, all or nothing: if one family fails,
 * the families this call changed are unlocked again (`rollback`, the
 * unlock of lib/unlock/) before the error is thrown.
 *
 * @param ctx The target's exec, the rules and the families.
 * @param rollback Removes the lock from the families given in its context.
 * @returns Whether anything changed.
 */
export async function iptablesLock(
  ctx: IptablesContext,
  rollback: (ctx: IptablesContext) => Promise<unknown>,
): Promise<{ changed: boolean }> {
  let changed = false;
  let families = ctx.families;
  // Every family this call may have touched: changed ones, and failed ones
  // (a killed tool may have committed before it died).
  const touched = new Set<Family>();
  const suspects = new Map<Family, number>();
  let known = new Map<Family, IptablesLockState | undefined>();
  try {
    for (let attempt = 0; attempt < MAX_ATTEMPTS && families.length > 0; attempt++) {
      const outcomes = await Promise.allSettled(
        families.map((family) => lockFamily(ctx, family, known.get(family))),
      );
      // The lock's guard found no IPv6 in the target's kernel: that family is not locked.
      const absent = families.filter((_, i) => refusedFor(outcomes[i], "no-ipv6"));
      if (absent.length > 0) {
        ctx = { ...ctx, families: ctx.families.filter((family) => !absent.includes(family)) };
      }
      const applied = families.filter((family, i) => {
        const outcome = outcomes[i];
        // A guard's refusal ran nothing; a failed tool may have committed before it died.
        const touches = outcome.status === "rejected"
          ? !stoppedBeforeTool(outcome.reason)
          : outcome.value;
        if (touches) touched.add(family);
        return outcome.status === "fulfilled" && outcome.value;
      });
      const failure = outcomes.find((o, i) =>
        o.status === "rejected" && !absent.includes(families[i])
      ) as PromiseRejectedResult;
      if (failure) throw failure.reason;
      changed ||= applied.length > 0;
      if (ctx.dryRun) return { changed };
      // Families are separate transactions: a concurrent unlock may have
      // removed one family's lock while this call applied the other, and
      // concurrent iptables-nft restores racing a table's re-creation can
      // duplicate a lock. Check every family at the end, and lock again
      // (or repair) what is not exactly in place.
      const unlocked = await unlockedFamilies(ctx);
      families = [...unlocked.keys()];
      known = unlocked;
      for (const family of families.filter((f) => applied.includes(f))) {
        // Applied and gone at once: a concurrent unlock removed it, or the
        // tool exits 0 without doing its job (a broken or foreign binary).
        // The read cannot tell them apart (in a fresh namespace both leave
        // nothing), so only a run of them means a broken tool: an unlock
        // winning twice in a row does happen under contention (stress test).
        const count = (suspects.get(family) ?? 0) + 1;
        if (count >= SUSPECT_LIMIT) {
          throw new NetlockError(
            "TOOL_FAILED",
            `${FAMILY_TOOLS[family].restore} exited with code 0 but the lock is not in place`,
          );
        }
        suspects.set(family, count);
      }
      if (families.length > 0 && attempt === MAX_ATTEMPTS - 1) throw conflict(families.join("+"));
    }
    return { changed };
  } catch (error) {
    if (touched.size === 0) throw error;
    const undone = await Promise.allSettled([
      rollback({ ...ctx, exec: ctx.rollbackExec ?? ctx.exec, families: [...touched] }),
    ]);
    throw withRollbackNote(error, undone);
  }
}

/**
 * Reads the lock state of every family of the context.
 *
 * @param ctx The target's exec, the rules and the families.
 * @param tables The families' filter tables, when already being read (one
 *   read serves several locks), in the context's order.
 * @returns The state per family, in the context's order.
 */
export async function iptablesStatus(
  ctx: IptablesContext,
  tables?: Promise<SavedTable[]>,
): Promise<IptablesLockState[]> {
  if (!tables) return await Promise.all(ctx.families.map((family) => readState(ctx, family)));
  const read = await tables;
  return ctx.families.map((family, i) => inspectIptablesLock(read[i], rulesOf(ctx, family)));
}

/**
 * Locks one family through iptables-restore, retrying against concurrent
 * changes; `known` is its state when already read.
 *
 * @param ctx The target's exec, the rules and the families.
 * @param family The family.
 * @param known The family's state, when already read.
 * @returns Whether anything changed.
 */
export async function lockFamily(
  ctx: IptablesContext,
  family: Family,
  known?: IptablesLockState,
): Promise<boolean> {
  // Optimistic: assume no lock and try; only a failure costs a read.
  let state = known ?? (ctx.dryRun ? await readState(ctx, family) : UNLOCKED_STATE);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    refuseForeign(state, family, rulesOf(ctx, family).name);
    const step = planIptablesLock(state, rulesOf(ctx, family));
    if (!step) return false;
    const result = await applyStep(ctx, family, step);
    if (result.success && !result.stdinClosedEarly) {
      return true;
    }
    const next = await readStateAfterFailure(ctx, family, result, step);
    if (next.status === "locked") return false;
    if (sameLockState(next, state)) assertToolSuccess(result, toolName(family, step));
    state = next;
  }
  throw conflict(family);
}

/**
 * Unlocks one family through iptables-restore (legacy iptables, or no nft),
 * retrying against concurrent changes.
 *
 * @param ctx The target's exec, the rules and the families.
 * @param family The family.
 * @returns Whether anything changed.
 */
export async function unlockFamily(ctx: IptablesContext, family: Family): Promise<boolean> {
  let state = await readState(ctx, family);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    refuseForeign(state, family, rulesOf(ctx, family).name);
    const step = planIptablesUnlock(state, rulesOf(ctx, family));
    if (!step) return false;
    const result = await applyStep(ctx, family, step);
    if (result.success && !result.stdinClosedEarly) return true;
    const next = await readStateAfterFailure(ctx, family, result, step);
    if (next.status === "unlocked") return false;
    if (sameLockState(next, state)) assertToolSuccess(result, toolName(family, step));
    state = next;
  }
  throw conflict(family);
}

async function applyStep(
  ctx: IptablesContext,
  family: Family,
  step: IptablesStep,
): Promise<RunResult> {
  const tool = FAMILY_TOOLS[family].restore;
  const args = ["-w", "--noflush"];
  if (ctx.dryRun) {
    ctx.log?.(`would run: ${tool} ${args.join(" ")} <<EOF\n${step.script}EOF`);
    return {
      argv: [],
      code: 0,
      signal: null,
      success: true,
      stdout: "",
      stderr: "",
      stdinClosedEarly: false,
    };
  }
  return await ctx.exec(tool, args, step.script);
}

async function readState(ctx: IptablesContext, family: Family): Promise<IptablesLockState> {
  return inspectIptablesLock(await readIptablesTable(ctx.exec, family), rulesOf(ctx, family));
}

/**
 * A family's filter table as `iptables-save -t filter` shows it (legacy
 * iptables as well as iptables-nft).
 *
 * @param exec Runs a tool in the target's namespace.
 * @param family The family.
 * @returns Its chains and rules.
 */
export async function readIptablesTable(exec: ToolExec, family: Family): Promise<SavedTable> {
  const tool = FAMILY_TOOLS[family].save;
  const result = await exec(tool, ["-t", "filter"]);
  assertToolSuccess(result, tool);
  return parseIptablesSave(result.stdout);
}

async function readStateAfterFailure(
  ctx: IptablesContext,
  family: Family,
  result: RunResult,
  step: IptablesStep,
): Promise<IptablesLockState> {
  // A missing tool or a refusal will not go away by retrying.
  if (toolMissing(result) || result.stdinClosedEarly && result.success) {
    assertToolSuccess(result, toolName(family, step));
  }
  return await readState(ctx, family);
}

/**
 * The families whose lock is not exactly in place, with what was read. A
 * small chain is read whole; a connection lock (thousands of rules, in a
 * chain or a tree of chains) is judged by its jumps from INPUT, which
 * iptables lists without the chain.
 */
async function unlockedFamilies(
  ctx: IptablesContext,
): Promise<Map<Family, IptablesLockState | undefined>> {
  const states = await Promise.all(ctx.families.map(async (family) => {
    const rules = rulesOf(ctx, family);
    const bulky = Array.isArray(rules.body) &&
      (rules.body.length > 16 || (rules.subchains?.length ?? 0) > 0);
    if (!bulky) {
      const state = await readState(ctx, family);
      return state.status === "locked" ? undefined : state;
    }
    const tool = family === "ipv4" ? "iptables" : "ip6tables";
    const result = await ctx.exec(tool, ["-w", "-S", "INPUT"]);
    assertToolSuccess(result, tool);
    const jumps = result.stdout.split("\n").filter((line) => line === `-A INPUT -j ${rules.name}`);
    return jumps.length === 1 ? undefined : await readState(ctx, family);
  }));
  return new Map(
    ctx.families.flatMap((family, i) => states[i] ? [[family, states[i]] as const] : []),
  );
}

/**
 * Throws `NAME_IN_USE` when the chain of the lock's name is not a netlock
 * lock: netlock never adopts, flushes or deletes what it did not make.
 *
 * @param state The family's state.
 * @param family The family.
 * @param name The lock's name.
 */
export function refuseForeign(state: IptablesLockState, family: Family, name: string): void {
  if (!state.foreign) return;
  throw foreignChainError(name, FAMILY_TOOLS[family].nftFamily);
}

/**
 * The error for a chain of the lock's name that netlock did not make.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { foreignChainError } from "./backend.ts";
 *
 * assert.match(foreignChainError("NETLOCK", "ip").message, /^chain NETLOCK of table ip filter is not/);
 * ```
 *
 * @param name The chain.
 * @param table `ip` or `ip6` (the filter table of that family).
 * @returns The error.
 */
export function foreignChainError(name: string, table: "ip" | "ip6"): NetlockError {
  return new NetlockError(
    "NAME_IN_USE",
    `chain ${name} of table ${table} filter is not a netlock lock (it holds, or is used by, ` +
      "rules netlock never makes); netlock leaves it alone: give the lock another --name",
  );
}

function refusedFor(
  outcome: PromiseSettledResult<unknown>,
  reason: GuardRefusal["reason"],
): boolean {
  return outcome.status === "rejected" && outcome.reason instanceof GuardRefusal &&
    outcome.reason.reason === reason;
}

function rulesOf(ctx: IptablesContext, family: Family): LockRules {
  return ctx.rulesFor?.(family) ?? ctx.rules;
}

function toolName(family: Family, _step: IptablesStep): string {
  return FAMILY_TOOLS[family].restore;
}

function conflict(family: string): NetlockError {
  return new NetlockError(
    "CONFLICT",
    `the ${family} filter table kept changing under concurrent callers; gave up after ${MAX_ATTEMPTS} attempts`,
  );
}

/**
 * The error of a failed change, with a note when undoing it failed too.
 *
 * @param reason What made the change fail.
 * @param rollback The outcomes of undoing it.
 * @returns The error to throw.
 */
export function withRollbackNote(
  reason: unknown,
  rollback: PromiseSettledResult<unknown>[],
): unknown {
  const failed = rollback.find((outcome) => outcome.status === "rejected");
  if (!failed || !(reason instanceof NetlockError)) return reason;
  const why = failed.reason instanceof Error ? failed.reason.message : String(failed.reason);
  return new NetlockError(reason.code, `${reason.message} (and the rollback failed: ${why})`, {
    cause: reason,
  });
}
