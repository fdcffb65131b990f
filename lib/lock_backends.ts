/**
 * Chooses and combines the backends of a lock (of a namespace, or of a
 * process's connections): lock with the one asked for (`auto`: nftables,
 * falling back to iptables), and unlock and read the status through both,
 * so a lock is found whichever backend made it.
 *
 * @module
 */

import { CRIU_IPTABLES_RULES, findCriuNftTables } from "./criu_locks.ts";
import { assertToolSuccess, type ToolExec, toolMissing } from "./nsenter.ts";
import type { RunResult } from "./runner.ts";
import { type NftTableView, parseNftTableJson } from "./nft_view_parser.ts";
import { planUnlock, type UnlockPlan } from "./unlock_plan.ts";
import { NetlockError } from "./errors.ts";
import {
  type IptablesContext,
  iptablesLock,
  iptablesStatus,
  iptablesUnlock,
} from "./iptables/backend.ts";
import {
  lockNftTable,
  type NftContext,
  type NftTableLock,
  readNftLockTable,
} from "./nftables/backend.ts";
import { inspectNftLock } from "./nftables/lock_state.ts";
import { renderNftLock, renderNftRelock } from "./nftables/ruleset.ts";
import type { LockRules } from "./iptables/ruleset.ts";
import type { IptablesLockState } from "./iptables/lock_state.ts";
import type { Family } from "./types.ts";
import type { Prepared, ResolvedOptions } from "./prepare.ts";
import type { CriuLocks } from "./types.ts";

// Each failed transaction means another caller changed the state in between.
const MAX_ATTEMPTS = 12;

/** A backend that can hold a lock. */
export type BackendName = "iptables" | "nftables";

/**
 * What a lock looks like in each backend: the iptables chain per family, and
 * the nftables table.
 */
export interface LockShape {
  /** The iptables chain and nftables table name. */
  name: string;
  /** The iptables chain of a family. */
  iptablesRules(family: Family): LockRules;
  /** The nftables table. */
  nftLock: NftTableLock;
  /** Counts what a family's chain or the table locks (connection locks). */
  count?(iptables: IptablesLockState[], table: NftTableView | null): number;
}

/**
 * The shape of a namespace lock.
 *
 * @param opts The validated options (name and mark).
 * @returns The chain `NAME` and the table `inet NAME`.
 */
export function namespaceShape(opts: ResolvedOptions): LockShape {
  const rules = { name: opts.name, mark: opts.mark };
  return {
    name: opts.name,
    iptablesRules: () => rules,
    nftLock: {
      create: () => renderNftLock(rules),
      replace: () => renderNftRelock(rules),
      inspect: (view) => inspectNftLock(view, rules),
    },
  };
}

/** What an operation did or found. */
export interface NamespaceOutcome {
  /** Whether anything changed. */
  changed: boolean;
  /** The backend that made, holds or held the lock. */
  backend: BackendName;
  /** The lock's state (status only). */
  state?: "locked" | "unlocked" | "partial";
  /** CRIU's own locks (with `criu`). */
  criu?: CriuLocks;
  /** How many connections the lock covers (connection locks). */
  connections?: number;
  /** Problems that did not stop the operation. */
  warnings?: string[];
}

/**
 * Locks the namespace with the chosen backend.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @returns Whether anything changed and which backend locked.
 */
export async function lockWithBackend(
  prepared: Prepared,
  opts: ResolvedOptions,
  shape: LockShape,
): Promise<NamespaceOutcome> {
  const ipt = iptablesContext(prepared, opts, shape);
  if (opts.backend === "iptables") return { ...(await iptablesLock(ipt)), backend: "iptables" };
  try {
    const nft = nftContext(prepared, opts, shape);
    return { ...(await lockNftTable(nft, shape.nftLock)), backend: "nftables" };
  } catch (error) {
    if (opts.backend === "nftables" || !nftUnusable(error)) throw error;
    opts.exec.log?.(`  nftables unusable (${(error as Error).message}); falling back to iptables`);
    return { ...(await iptablesLock(ipt)), backend: "iptables" };
  }
}

/**
 * Unlocks through both backends at once: one read of the namespace's
 * nf_tables state, then ONE nft transaction that removes netlock's iptables
 * chain (iptables-nft) and nftables table, and CRIU's leftovers with `criu`.
 * Legacy iptables (or no nft) is unlocked through iptables-restore. A
 * concurrent change makes the transaction fail as a whole; it is then
 * planned again from a new read.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @param shape The lock's name and form.
 * @returns Whether anything changed and which backend held the lock.
 */
export async function unlockAllBackends(
  prepared: Prepared,
  opts: ResolvedOptions,
  shape: LockShape,
): Promise<NamespaceOutcome> {
  const ipt = iptablesContext(prepared, opts, shape);
  const names = [shape.name, ...(opts.criu ? ["CRIU"] : [])];
  const [initial, flavour] = await Promise.all([
    readNftState(prepared.exec, names, prepared.prefetch?.ruleset),
    iptablesFlavour(prepared.exec, prepared.prefetch?.flavour),
  ]);
  // Legacy iptables keeps its rules outside nf_tables: only iptables-restore sees them.
  let legacy = { changed: false, criu: false };
  if (flavour === "legacy" || initial === undefined) {
    if (flavour === "missing" && initial === undefined) {
      throw new NetlockError("TOOL_NOT_FOUND", "neither nft nor iptables is installed");
    }
    const [own, criu] = await Promise.all([
      flavour === "missing" ? { changed: false } : iptablesUnlock(ipt),
      opts.criu && flavour !== "missing"
        ? iptablesUnlock({ ...ipt, rules: CRIU_IPTABLES_RULES, rulesFor: undefined })
        : { changed: false },
    ]);
    legacy = { changed: own.changed, criu: criu.changed };
  }
  let state = initial;
  let removed: UnlockPlan | undefined;
  for (let attempt = 0; state && attempt < MAX_ATTEMPTS; attempt++) {
    const plan = planUnlock(state, shape.name, opts.criu);
    if (plan.commands.length === 0) break;
    // Only iptables locks are applied family by family, so only they can be
    // half-applied by a concurrent lock: then the state is read back after
    // the transaction. Otherwise (a namespace's small ruleset) nft's echo
    // checks the work: it echoes additions only, so an empty marker table is
    // added and removed within the same transaction. (Echoing a connection
    // lock's ruleset would cost nft 0.7 s of parsing: it is read back.)
    const echo = prepared.mode === "netns" && plan.iptables.length === 0 &&
      plan.criu.iptables.length === 0;
    const marker = `inet ${shape.name}-unlock`;
    const script = `${plan.commands.join("\n")}\n` +
      (echo ? `add table ${marker}\ndelete table ${marker}\n` : "");
    if (opts.dryRun) {
      opts.exec.log?.(`would run: nft -f - <<EOF\n${script}EOF`);
      removed = plan;
      break;
    }
    const result = await prepared.exec("nft", echo ? ["-e", "-f", "-"] : ["-f", "-"], script);
    if (result.success && !result.stdinClosedEarly) {
      if (echo) {
        if (!result.stdout.includes(`add table ${marker}`)) {
          throw new NetlockError(
            "TOOL_FAILED",
            "nft exited with code 0 but did not apply the unlock",
          );
        }
        removed = mergePlans(removed, plan);
        break;
      }
      // The plan came from a read: a lock applied since (a concurrent lock's
      // second family) is still there. Read again until nothing is left.
      const after = await readNftState(prepared.exec, names);
      if (after && JSON.stringify(after) === JSON.stringify(state)) {
        throw new NetlockError(
          "TOOL_FAILED",
          "nft exited with code 0 but did not apply the unlock",
        );
      }
      removed = mergePlans(removed, plan);
      state = after;
      continue;
    }
    const next = await readNftState(prepared.exec, names);
    if (JSON.stringify(next) === JSON.stringify(state)) {
      try {
        assertToolSuccess(result, "nft");
      } catch (error) {
        if (legacy.changed) await iptablesLock(ipt).catch(() => {});
        throw error;
      }
    }
    state = next;
  }
  const criu: CriuLocks | undefined = opts.criu
    ? {
      iptables: legacy.criu ? prepared.families : removed?.criu.iptables ?? [],
      nftables: removed?.criu.nftables ?? [],
    }
    : undefined;
  const nftChanged = removed?.nftables ?? false;
  const iptChanged = legacy.changed || (removed?.iptables.length ?? 0) > 0;
  return {
    changed: nftChanged || iptChanged || (criu !== undefined &&
      (criu.iptables.length > 0 || criu.nftables.length > 0)),
    backend: nftChanged ? "nftables" : iptChanged ? "iptables" : requestedBackend(opts),
    ...(criu ? { criu } : {}),
  };
}

/**
 * Everything the unlock needs from nf_tables, without listing a lock's own
 * rules or set elements (tens of thousands for a connection lock, seconds of
 * nft time): the chains of every table, then the rules of the INPUT/OUTPUT
 * chains of the filter tables that hold a lock chain. `undefined` when nft
 * is not installed.
 */
async function readNftState(
  exec: ToolExec,
  names: string[],
  ruleset?: Promise<RunResult>,
): Promise<NftTableView | undefined> {
  // A namespace lock's whole ruleset, read with the probe, holds everything.
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
    state.chains.some((c) =>
      c.family === chain.family && c.table === "filter" && names.includes(c.name)
    )
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

function mergePlans(a: UnlockPlan | undefined, b: UnlockPlan): UnlockPlan {
  if (!a) return b;
  const union = <T>(x: T[], y: T[]) => [...new Set([...x, ...y])];
  return {
    commands: [...a.commands, ...b.commands],
    iptables: union(a.iptables, b.iptables),
    nftables: a.nftables || b.nftables,
    criu: {
      iptables: union(a.criu.iptables, b.criu.iptables),
      nftables: union(a.criu.nftables, b.criu.nftables),
    },
  };
}

/** Which iptables the target's PATH has: `nf_tables`, `legacy`, or `missing`. */
async function iptablesFlavour(
  exec: ToolExec,
  prefetched?: Promise<RunResult>,
): Promise<"nf_tables" | "legacy" | "missing"> {
  const result = await (prefetched ?? exec("iptables", ["-V"]));
  if (toolMissing(result)) return "missing";
  return /\(legacy\)/.test(result.stdout) || !/nf_tables/.test(result.stdout)
    ? "legacy"
    : "nf_tables";
}

/**
 * Reads the lock's state through both backends (and CRIU's locks with `criu`).
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @returns The state and the backend holding the lock.
 */
export async function statusAllBackends(
  prepared: Prepared,
  opts: ResolvedOptions,
  shape: LockShape,
): Promise<NamespaceOutcome> {
  const ipt = iptablesContext(prepared, opts, shape);
  const [iptStates, nftTable, criuIpt, criuNft] = await Promise.allSettled([
    iptablesStatus(ipt),
    readNftLockTable(nftContext(prepared, opts, shape)),
    opts.criu
      ? iptablesStatus({ ...ipt, rules: CRIU_IPTABLES_RULES, rulesFor: undefined })
      : Promise.resolve([]),
    opts.criu ? findCriuNftTables(prepared.exec) : Promise.resolve([]),
  ]);
  for (const outcome of [iptStates, nftTable, criuIpt, criuNft]) {
    if (outcome.status === "rejected" && !missingToolError(outcome.reason)) throw outcome.reason;
  }
  if (iptStates.status === "rejected" && nftTable.status === "rejected") throw iptStates.reason;
  const ipv = iptStates.status === "fulfilled" ? iptStates.value.map((s) => s.status) : [];
  const iptState = ipv.length === 0 || ipv.every((s) => s === "unlocked")
    ? "unlocked"
    : ipv.every((s) => s === "locked")
    ? "locked"
    : "partial";
  const table = nftTable.status === "fulfilled" ? nftTable.value : null;
  const nft = shape.nftLock.inspect(table);
  const criu: CriuLocks | undefined = opts.criu
    ? {
      iptables: criuIpt.status === "fulfilled"
        ? prepared.families.filter((_, i) =>
          criuIpt.value[i] && criuIpt.value[i].status !== "unlocked"
        )
        : [],
      nftables: criuNft.status === "fulfilled" ? criuNft.value : [],
    }
    : undefined;
  const state = nft === "locked" || iptState === "locked"
    ? "locked"
    : nft === "partial" || iptState === "partial"
    ? "partial"
    : "unlocked";
  const backend: BackendName = nft !== "unlocked"
    ? "nftables"
    : iptState !== "unlocked"
    ? "iptables"
    : requestedBackend(opts);
  const counted = shape.count?.(iptStates.status === "fulfilled" ? iptStates.value : [], table);
  return {
    changed: false,
    backend,
    state,
    ...(criu ? { criu } : {}),
    ...(counted === undefined ? {} : { connections: counted }),
  };
}

function iptablesContext(
  prepared: Prepared,
  opts: ResolvedOptions,
  shape: LockShape,
): IptablesContext {
  return {
    exec: prepared.exec,
    rules: shape.iptablesRules(prepared.families[0]),
    rulesFor: shape.iptablesRules,
    families: prepared.families,
    dryRun: opts.dryRun,
    log: opts.exec.log,
  };
}

function nftContext(prepared: Prepared, opts: ResolvedOptions, shape: LockShape): NftContext {
  return {
    exec: prepared.exec,
    rules: { name: shape.name, mark: opts.mark },
    dryRun: opts.dryRun,
    log: opts.exec.log,
  };
}

function requestedBackend(opts: ResolvedOptions): BackendName {
  return opts.backend === "iptables" ? "iptables" : "nftables";
}

function missingToolError(error: unknown): boolean {
  return error instanceof NetlockError && error.code === "TOOL_NOT_FOUND";
}

function nftUnusable(error: unknown): boolean {
  return missingToolError(error) ||
    (error instanceof NetlockError && error.code === "TOOL_FAILED" &&
      /not supported|Protocol not supported|Could not receive/i.test(error.message));
}
