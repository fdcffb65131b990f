/**
 * The unlock through both backends: which locks (a namespace's, a
 * process's connections', or every lock of a name), read once, removed in
 * one nft transaction, or lock by lock through iptables-restore where the
 * rules live outside nf_tables (legacy iptables).
 *
 * @module
 */

import { CRIU_IPTABLES_RULES } from "./criu_locks.ts";
import { processLockOf } from "../connections/ruleset.ts";
import { cgroupShape } from "../shape/cgroup.ts";
import { NetlockError } from "../common/errors.ts";
import { iptablesLock, readIptablesTable } from "../iptables/backend.ts";
import { unlockThroughNft } from "./transaction.ts";
import { readNftState } from "./state.ts";
import { type ToolExec, toolMissing } from "../exec/nsenter.ts";
import type { Prepared, ResolvedOptions } from "../netns/prepare.ts";
import type { RunResult } from "../exec/runner.ts";
import { connectionShape } from "../shape/connections.ts";
import {
  iptablesContext,
  type LockShape,
  type NamespaceOutcome,
  namespaceShape,
  requestedBackend,
} from "../shape/shape.ts";
import type { CriuLocks } from "../common/types.ts";
import { iptablesUnlock } from "./iptables.ts";
import { isLockName, type UnlockPlan } from "./plan.ts";

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
  const bulky = (name: string) => processLockOf(name, opts.name)?.kind === "connections";
  const [initial, flavour] = await Promise.all([
    readNftState(prepared.exec, {
      wanted: (name) => wanted(name) || (opts.criu && name === "CRIU"),
      bulky,
      ruleset: prepared.prefetch?.ruleset,
    }),
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
        bulky,
        kindOf: (name) => processLockOf(name, opts.name)?.kind ?? "netns",
        dryRun: opts.dryRun,
        log: opts.exec.log,
      });
    } catch (error) {
      // Put back what the legacy part removed: nothing is left half-unlocked.
      await putBack(prepared, opts, legacy.removed);
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
  const foreign = removed?.foreign ?? [];
  return {
    changed: nftChanged || iptChanged || (criu !== undefined &&
      (criu.iptables.length > 0 || criu.nftables.length > 0)),
    backend: nftChanged ? "nftables" : iptChanged ? "iptables" : requestedBackend(opts),
    locks,
    ...(criu ? { criu } : {}),
    ...(foreign.length > 0
      ? { warnings: foreign.map((what) => `${what} is not a netlock lock: left alone`) }
      : {}),
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
    await putBack(prepared, opts, removed);
    throw error;
  }
  const criu = opts.criu
    ? await iptablesUnlock({
      ...iptablesContext(prepared, opts, namespaceShape(opts, "read")),
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
  const lock = processLockOf(name, opts.name);
  if (lock === undefined) return namespaceShape(opts, "read");
  return lock.kind === "connections"
    ? connectionShape(opts.name, opts.mark, lock.pid)
    : cgroupShape(opts.name, opts.mark, lock.pid);
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

/** Locks `names` again after a later step of the unlock failed (best effort). */
async function putBack(prepared: Prepared, opts: ResolvedOptions, names: string[]): Promise<void> {
  for (const name of names) {
    const ctx = iptablesContext(prepared, opts, shapeNamed(opts, name));
    await iptablesLock(ctx, iptablesUnlock).catch(() => {});
  }
}
