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
import { isLockName, type UnlockPlan } from "./unlock_plan.ts";
import { connectionLockPid } from "./connections/ruleset.ts";
import { connectionShape } from "./connections/shape.ts";
import { NetlockError } from "./errors.ts";
import {
  type IptablesContext,
  iptablesLock,
  iptablesStatus,
  iptablesUnlock,
  readIptablesTable,
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
import type { Family, LockKind } from "./types.ts";
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
  /** Unlock: the names of the locks removed. */
  locks?: string[];
  /** Status: the kinds of lock found. */
  kinds?: LockKind[];
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
 * Which locks an unlock removes: the locks of these shapes (a namespace
 * lock, a process's connection lock, or both), or every lock of netlock's
 * called `allOf` in the namespace (`unlock --all`).
 */
export type UnlockSelection = { shapes: LockShape[] } | { allOf: string };

/**
 * Unlocks through both backends at once: one read of the namespace's
 * nf_tables state, then ONE nft transaction that removes netlock's iptables
 * chains (iptables-nft) and nftables tables of the selection, and CRIU's
 * leftovers with `criu`. Legacy iptables (or no nft) is unlocked through
 * iptables-restore, lock by lock. A concurrent change makes the transaction
 * fail as a whole; it is then planned again from a new read.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @param selection The locks to remove.
 * @returns Whether anything changed, which backend held the lock, the locks removed.
 */
export async function unlockAllBackends(
  prepared: Prepared,
  opts: ResolvedOptions,
  selection: UnlockSelection,
): Promise<NamespaceOutcome> {
  const wanted = "allOf" in selection
    ? (name: string) => isLockName(name, selection.allOf)
    : (name: string) => selection.shapes.some((shape) => shape.name === name);
  const [initial, flavour] = await Promise.all([
    readNftState(
      prepared.exec,
      (name) => wanted(name) || (opts.criu && name === "CRIU"),
      prepared.prefetch?.ruleset,
    ),
    iptablesFlavour(prepared.exec, prepared.prefetch?.flavour),
  ]);
  // Legacy iptables keeps its rules outside nf_tables: only iptables-restore sees them.
  let legacy = { removed: [] as string[], criu: false };
  if (flavour === "legacy" || initial === undefined) {
    if (flavour === "missing" && initial === undefined) {
      throw new NetlockError("TOOL_NOT_FOUND", "neither nft nor iptables is installed");
    }
    if (flavour !== "missing") legacy = await unlockLegacy(prepared, opts, selection);
  }
  let removed: UnlockPlan | undefined;
  if (initial) {
    try {
      removed = await unlockThroughNft(prepared.exec, initial, {
        wanted,
        criu: opts.criu,
        bulky: (name) => connectionLockPid(name, opts.name) !== undefined,
        dryRun: opts.dryRun,
        log: opts.exec.log,
      });
    } catch (error) {
      // Put back what the legacy part removed: nothing is left half-unlocked.
      for (const name of legacy.removed) {
        await iptablesLock(iptablesContext(prepared, opts, shapeNamed(opts, name))).catch(() => {});
      }
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
  const iptChanged = legacy.removed.length > 0 || (removed?.iptables.length ?? 0) > 0;
  const locks = [...new Set([...(removed?.locks ?? []), ...legacy.removed])];
  return {
    changed: nftChanged || iptChanged || (criu !== undefined &&
      (criu.iptables.length > 0 || criu.nftables.length > 0)),
    backend: nftChanged ? "nftables" : iptChanged ? "iptables" : requestedBackend(opts),
    locks,
    ...(criu ? { criu } : {}),
  };
}

/**
 * Legacy iptables: each selected lock through iptables-restore (all or
 * nothing per lock and family set; a later failure locks the earlier ones
 * again), and CRIU's chain with `criu`.
 */
async function unlockLegacy(
  prepared: Prepared,
  opts: ResolvedOptions,
  selection: UnlockSelection,
): Promise<{ removed: string[]; criu: boolean }> {
  const shapes = "shapes" in selection
    ? selection.shapes
    : (await legacyLockNames(prepared, selection.allOf)).map((name) => shapeNamed(opts, name));
  const removed: string[] = [];
  try {
    for (const shape of shapes) {
      const outcome = await iptablesUnlock(iptablesContext(prepared, opts, shape));
      if (outcome.changed) removed.push(shape.name);
    }
  } catch (error) {
    for (const name of removed) {
      await iptablesLock(iptablesContext(prepared, opts, shapeNamed(opts, name))).catch(() => {});
    }
    throw error;
  }
  const criu = opts.criu
    ? await iptablesUnlock({
      ...iptablesContext(prepared, opts, shapeNamed(opts, opts.name)),
      rules: CRIU_IPTABLES_RULES,
      rulesFor: undefined,
    })
    : { changed: false };
  return { removed, criu: criu.changed };
}

/** The lock chains called `name` (or `name-cPID`) that iptables-save shows. */
async function legacyLockNames(prepared: Prepared, name: string): Promise<string[]> {
  const tables = await Promise.all(
    prepared.families.map((family) => readIptablesTable(prepared.exec, family)),
  );
  const chains = tables.flatMap((table) => table.chains.map((chain) => chain.name));
  return [...new Set(chains)].filter((chain) => isLockName(chain, name));
}

/** The shape of the lock called `name`: a connection lock `NAME-cPID`, or the namespace lock. */
function shapeNamed(opts: ResolvedOptions, name: string): LockShape {
  const pid = connectionLockPid(name, opts.name);
  return pid === undefined ? namespaceShape(opts) : connectionShape(opts.name, opts.mark, pid);
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
 * Reads the state of the locks of `shapes` (a namespace lock, a process's
 * connection lock, or both) through both backends, in one round of reads,
 * and CRIU's locks with `criu`. The state is the worst found (a half lock
 * is `partial` whatever else is there); backend, kind and connection count
 * are those of the first lock found.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @param shapes The locks to look for, with their kinds.
 * @returns The state, the backend holding the lock, the kinds found.
 */
export async function statusAllBackends(
  prepared: Prepared,
  opts: ResolvedOptions,
  shapes: { kind: LockKind; shape: LockShape }[],
): Promise<NamespaceOutcome> {
  const ipt = iptablesContext(prepared, opts, shapes[0].shape);
  const [criuIpt, criuNft, ...states] = await Promise.allSettled([
    opts.criu
      ? iptablesStatus({ ...ipt, rules: CRIU_IPTABLES_RULES, rulesFor: undefined })
      : Promise.resolve([]),
    opts.criu ? findCriuNftTables(prepared.exec) : Promise.resolve([]),
    ...shapes.map(({ shape }) => shapeStatus(prepared, opts, shape)),
  ]);
  for (const outcome of [criuIpt, criuNft]) {
    if (outcome.status === "rejected" && !missingToolError(outcome.reason)) throw outcome.reason;
  }
  for (const outcome of states) if (outcome.status === "rejected") throw outcome.reason;
  const found = shapes.map(({ kind }, i) => {
    const state = states[i] as PromiseFulfilledResult<ShapeStatus>;
    return { kind, ...state.value };
  });
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
  const present = found.filter((lock) => lock.state !== "unlocked");
  const first = present[0] ?? found[0];
  const state = present.some((lock) => lock.state === "partial")
    ? "partial"
    : present.length > 0
    ? "locked"
    : "unlocked";
  const counted = found.find((lock) => lock.connections !== undefined && lock.state !== "unlocked");
  return {
    changed: false,
    backend: present.length > 0 ? first.backend : requestedBackend(opts),
    state,
    kinds: present.map((lock) => lock.kind),
    ...(criu ? { criu } : {}),
    ...(counted ? { connections: counted.connections } : {}),
  };
}

interface ShapeStatus {
  state: "locked" | "unlocked" | "partial";
  backend: BackendName;
  connections?: number;
}

/** One lock's state through both backends (a missing tool counts as no lock). */
async function shapeStatus(
  prepared: Prepared,
  opts: ResolvedOptions,
  shape: LockShape,
): Promise<ShapeStatus> {
  const [iptStates, nftTable] = await Promise.allSettled([
    iptablesStatus(iptablesContext(prepared, opts, shape)),
    readNftLockTable(nftContext(prepared, opts, shape)),
  ]);
  for (const outcome of [iptStates, nftTable]) {
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
  const counted = shape.count?.(iptStates.status === "fulfilled" ? iptStates.value : [], table);
  return {
    state: nft === "locked" || iptState === "locked"
      ? "locked"
      : nft === "partial" || iptState === "partial"
      ? "partial"
      : "unlocked",
    backend: nft !== "unlocked"
      ? "nftables"
      : iptState !== "unlocked"
      ? "iptables"
      : requestedBackend(opts),
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
