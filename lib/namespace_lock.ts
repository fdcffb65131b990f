/**
 * Chooses and combines the backends of a namespace lock: lock with the one
 * asked for (`auto`: nftables, falling back to iptables), and unlock and
 * read the status through both, so a lock is found whichever backend made
 * it.
 *
 * @module
 */

import { CRIU_IPTABLES_RULES, findCriuNftTables, removeCriuNftTables } from "./criu_locks.ts";
import { NetlockError } from "./errors.ts";
import {
  type IptablesContext,
  iptablesLock,
  iptablesStatus,
  iptablesUnlock,
} from "./iptables/backend.ts";
import { type NftContext, nftLock, nftStatus, nftUnlock } from "./nftables/backend.ts";
import type { Prepared, ResolvedOptions } from "./prepare.ts";
import type { CriuLocks } from "./types.ts";

/** A backend that can hold a lock. */
export type BackendName = "iptables" | "nftables";

/** What a namespace operation did or found. */
export interface NamespaceOutcome {
  /** Whether anything changed. */
  changed: boolean;
  /** The backend that made, holds or held the lock. */
  backend: BackendName;
  /** The lock's state (status only). */
  state?: "locked" | "unlocked" | "partial";
  /** CRIU's own locks (with `criu`). */
  criu?: CriuLocks;
}

/**
 * Locks the namespace with the chosen backend.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @returns Whether anything changed and which backend locked.
 */
export async function lockNamespace(
  prepared: Prepared,
  opts: ResolvedOptions,
): Promise<NamespaceOutcome> {
  if (opts.backend === "iptables") {
    return { ...(await iptablesLock(iptablesContext(prepared, opts))), backend: "iptables" };
  }
  try {
    return { ...(await nftLock(nftContext(prepared, opts))), backend: "nftables" };
  } catch (error) {
    if (opts.backend === "nftables" || !nftUnusable(error)) throw error;
    opts.exec.log?.(`  nftables unusable (${(error as Error).message}); falling back to iptables`);
    return { ...(await iptablesLock(iptablesContext(prepared, opts))), backend: "iptables" };
  }
}

/**
 * Unlocks the namespace through both backends (a backend whose tools are
 * missing is skipped), and removes CRIU's own locks with `criu`. If one part
 * fails, the parts this call unlocked are locked again.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @returns Whether anything changed and which backend held the lock.
 */
export async function unlockNamespace(
  prepared: Prepared,
  opts: ResolvedOptions,
): Promise<NamespaceOutcome> {
  const ipt = iptablesContext(prepared, opts);
  const nft = nftContext(prepared, opts);
  const [iptOutcome, nftOutcome, criuIpt, criuNft] = await Promise.allSettled([
    iptablesUnlock(ipt),
    nftUnlock(nft),
    opts.criu ? iptablesUnlock({ ...ipt, rules: CRIU_IPTABLES_RULES }) : Promise.resolve(null),
    opts.criu
      ? removeCriuNftTables(prepared.exec, opts.dryRun, opts.exec.log)
      : Promise.resolve([]),
  ]);
  const iptChanged = changedOf(iptOutcome);
  const nftChanged = changedOf(nftOutcome);
  const failure = [iptOutcome, nftOutcome, criuIpt, criuNft].find((o) =>
    o.status === "rejected" && !toolMissing(o.reason)
  ) as PromiseRejectedResult | undefined;
  const bothMissing = iptOutcome.status === "rejected" && nftOutcome.status === "rejected" &&
    toolMissing(iptOutcome.reason) && toolMissing(nftOutcome.reason);
  if (failure || bothMissing) {
    // Put back what this call removed, so that nothing is left half-unlocked.
    await Promise.allSettled([
      iptChanged ? iptablesLock(ipt) : undefined,
      nftChanged ? nftLock(nft) : undefined,
    ]);
    throw failure ? failure.reason : (iptOutcome as PromiseRejectedResult).reason;
  }
  const criuRemoved: CriuLocks | undefined = opts.criu
    ? {
      iptables: criuIpt.status === "fulfilled" && criuIpt.value?.changed ? prepared.families : [],
      nftables: criuNft.status === "fulfilled" ? criuNft.value : [],
    }
    : undefined;
  const criuChanged = criuRemoved !== undefined &&
    (criuRemoved.iptables.length > 0 || criuRemoved.nftables.length > 0);
  return {
    changed: iptChanged || nftChanged || criuChanged,
    backend: nftChanged ? "nftables" : iptChanged ? "iptables" : requestedBackend(opts),
    ...(criuRemoved ? { criu: criuRemoved } : {}),
  };
}

/**
 * Reads the lock's state through both backends (and CRIU's locks with `criu`).
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @returns The state and the backend holding the lock.
 */
export async function namespaceStatus(
  prepared: Prepared,
  opts: ResolvedOptions,
): Promise<NamespaceOutcome> {
  const ipt = iptablesContext(prepared, opts);
  const [iptStates, nftState, criuIpt, criuNft] = await Promise.allSettled([
    iptablesStatus(ipt),
    nftStatus(nftContext(prepared, opts)),
    opts.criu ? iptablesStatus({ ...ipt, rules: CRIU_IPTABLES_RULES }) : Promise.resolve([]),
    opts.criu ? findCriuNftTables(prepared.exec) : Promise.resolve([]),
  ]);
  for (const outcome of [iptStates, nftState, criuIpt, criuNft]) {
    if (outcome.status === "rejected" && !toolMissing(outcome.reason)) throw outcome.reason;
  }
  if (iptStates.status === "rejected" && nftState.status === "rejected") throw iptStates.reason;
  const ipv = iptStates.status === "fulfilled" ? iptStates.value.map((s) => s.status) : [];
  const iptState = ipv.length === 0 || ipv.every((s) => s === "unlocked")
    ? "unlocked"
    : ipv.every((s) => s === "locked")
    ? "locked"
    : "partial";
  const nft = nftState.status === "fulfilled" ? nftState.value : "unlocked";
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
  return { changed: false, backend, state, ...(criu ? { criu } : {}) };
}

function iptablesContext(prepared: Prepared, opts: ResolvedOptions): IptablesContext {
  return {
    exec: prepared.exec,
    rules: { name: opts.name, mark: opts.mark },
    families: prepared.families,
    dryRun: opts.dryRun,
    log: opts.exec.log,
  };
}

function nftContext(prepared: Prepared, opts: ResolvedOptions): NftContext {
  return {
    exec: prepared.exec,
    rules: { name: opts.name, mark: opts.mark },
    dryRun: opts.dryRun,
    log: opts.exec.log,
  };
}

function requestedBackend(opts: ResolvedOptions): BackendName {
  return opts.backend === "iptables" ? "iptables" : "nftables";
}

function changedOf(outcome: PromiseSettledResult<{ changed: boolean }>): boolean {
  return outcome.status === "fulfilled" && outcome.value.changed;
}

function toolMissing(error: unknown): boolean {
  return error instanceof NetlockError && error.code === "TOOL_NOT_FOUND";
}

function nftUnusable(error: unknown): boolean {
  return toolMissing(error) ||
    (error instanceof NetlockError && error.code === "TOOL_FAILED" &&
      /not supported|Protocol not supported|Could not receive/i.test(error.message));
}
