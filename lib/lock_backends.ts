/**
 * Chooses and combines the backends of a lock (of a namespace, or of a
 * process's connections): lock with the one asked for (`auto`: nftables,
 * falling back to iptables), and unlock and read the status through both,
 * so a lock is found whichever backend made it.
 *
 * @module
 */

import { CRIU_IPTABLES_RULES, findCriuNftTables } from "./criu_locks.ts";
import { type ToolExec, toolMissing } from "./nsenter.ts";
import type { RunResult } from "./runner.ts";
import type { NftTableView } from "./nft_view_parser.ts";
import { readNftState, unlockThroughNft } from "./nft_unlock.ts";
import type { UnlockPlan } from "./unlock_plan.ts";
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
  let removed: UnlockPlan | undefined;
  if (initial) {
    try {
      removed = await unlockThroughNft(prepared.exec, initial, {
        name: shape.name,
        criu: opts.criu,
        small: prepared.mode === "netns",
        dryRun: opts.dryRun,
        log: opts.exec.log,
      });
    } catch (error) {
      // Put back what the legacy part removed: nothing is left half-unlocked.
      if (legacy.changed) await iptablesLock(ipt).catch(() => {});
      throw error;
    }
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
