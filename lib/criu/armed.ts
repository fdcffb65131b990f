/**
 * The two-phase lock: arm, then fire. Arming does everything that can
 * happen before the moment of the lock (validate, probe the target, read
 * its state, start `nsenter … iptables-restore` / `nft -f -` waiting on
 * stdin); firing only writes the ruleset and closes stdin. This is what
 * makes netlock as CRIU's action script cost the frozen application no more
 * than a few milliseconds: CRIU freezes between the arm (`pre-dump`) and the
 * fire (`network-lock`).
 *
 * An armed step that cannot be taken as armed (the state changed, a tool
 * failed) falls back to the ordinary, idempotent and all-or-nothing
 * {@linkcode lockNetwork} / {@linkcode unlockNetwork}, so firing has the
 * same guarantees as they do.
 *
 * @module
 */

import { asNetworkLock, getLockStatus, lockNetwork, unlockNetwork } from "../operations.ts";
import {
  familiesOf,
  prepare,
  type Prepared,
  type ResolvedOptions,
  resolveOptions,
} from "../netns/prepare.ts";
import { renderIptablesChange, renderIptablesOpen } from "../iptables/ruleset.ts";
import { renderNftLock, renderNftOpen } from "../nftables/ruleset.ts";
import { type TargetRef, toTargetRef } from "../netns/target.ts";
import { cancelAll, firedAll, primer } from "./primed.ts";
import { FAMILY_TOOLS } from "../iptables/backend.ts";

export { ARMED_LIFETIME_MS } from "./primed.ts";
import type {
  Family,
  NetlockOptions,
  NetworkLock,
  OperationResult,
  Target,
  UnlockResult,
} from "../common/types.ts";

/** A lock made ready to be applied at once. */
export interface ArmedLock {
  /**
   * The lock `fire()` applies when it goes as armed (its backend, families,
   * name and mark), so that its unlock can be armed ahead too; `undefined`
   * when `fire()` is the ordinary {@linkcode lockNetwork}.
   */
  readonly lock?: KnownLock & { name: string; mark: number };
  /**
   * Applies the lock: writes the armed rulesets and waits for the tools.
   * Same result and guarantees as {@linkcode lockNetwork}.
   */
  fire(): Promise<NetworkLock>;
  /** Kills the armed tools without applying anything; resolves once they are gone. */
  cancel(): Promise<void>;
}

/** An unlock made ready to be applied at once. */
export interface ArmedUnlock {
  /**
   * Lets traffic flow again: the armed step alone opens the lock (an accept
   * or `RETURN` at its head; nothing is deleted, which would wait for an RCU
   * grace period). Call {@linkcode ArmedUnlock.finish} after.
   */
  fire(): Promise<UnlockResult>;
  /**
   * Removes the opened lock (the nftables table; the iptables jumps, chain
   * and the tables created for it), like {@linkcode unlockNetwork}; outside
   * the window where every millisecond counts.
   */
  finish(): Promise<UnlockResult>;
  /** Kills the armed tools without applying anything; resolves once they are gone. */
  cancel(): Promise<void>;
}

/**
 * Arms a namespace lock of `target`: after this resolves, `fire()` only
 * feeds the waiting tools. Dry runs, action scripts, connection mode and
 * targets in netlock's own namespace are not armed: their `fire()` is a
 * plain {@linkcode lockNetwork}.
 *
 * @example Lock at the moment an orchestrator chooses
 * ```ts
 * import { armNetworkLock } from "./armed.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const armed = await armNetworkLock(1234, { backend: "nftables" });
 *   // ... freeze the process ...
 *   await using lock = await armed.fire(); // a few ms: only the ruleset is written
 * }
 * ```
 *
 * @param target A PID, `{ pid }`, or `{ netns: PATH_OR_NAME }`.
 * @param options The options of {@linkcode lockNetwork}.
 * @returns The armed lock.
 */
export async function armNetworkLock(
  target: Target,
  options: NetlockOptions = {},
): Promise<ArmedLock> {
  const opts = resolveOptions(options, "lock");
  const plain: ArmedLock = { fire: () => lockNetwork(target, options), cancel: async () => {} };
  if (opts.dryRun || opts.actionScripts.length > 0 || opts.mode === "connections") return plain;
  const ref = toTargetRef(target, { userns: opts.userns });
  const prepared = await prepare(ref, opts, "lock");
  if (prepared.mode !== "netns") return plain;
  const stop = new AbortController();
  const spawn = primer(ref.nsenterArgs, opts.exec.log, stop.signal);
  const backend = opts.backend === "iptables" ? "iptables" : "nftables";
  // A lock that holds queues what it would drop (iptables: NFQUEUE).
  const rules = {
    name: opts.name,
    mark: opts.mark,
    ...(backend === "iptables" && opts.queue !== undefined ? { queue: opts.queue } : {}),
  };
  // `-N` / `create table`: the armed text fails as a whole on a lock already
  // there, and the fallback then finds it (changed: false).
  const steps = backend === "nftables"
    ? [{ tool: spawn("nft", ["-f", "-"]), text: renderNftLock(rules) }]
    : prepared.families.map((family) => ({
      tool: spawn(FAMILY_TOOLS[family].restore, ["-w", "--noflush"]),
      text: renderIptablesChange(rules, {
        removeJumps: { input: 0, output: 0 },
        chain: "create",
        addLock: true,
      }),
    }));
  const families = familiesOf(backend, prepared);
  return {
    lock: { backend, families, name: opts.name, mark: opts.mark },
    async fire() {
      const start = performance.now();
      if (await firedAll(steps, opts.exec.timeoutMs, stop)) {
        const locked = namespaceResult(ref, prepared, opts, { backend, families }, true);
        return asNetworkLock({ ...locked, durationMs: performance.now() - start }, target, options);
      }
      // Part of it failed or the lock was there: the ordinary lock decides
      // (idempotent, repairs a half lock); if it fails, leave nothing.
      try {
        return await lockNetwork(target, options);
      } catch (error) {
        await unlockNetwork(target, options).catch(() => {});
        throw error;
      }
    },
    cancel: () => cancelAll(steps, stop),
  };
}

/** A lock known to be in place, so that arming its unlock needs no read. */
export interface KnownLock {
  /** The backend that made it. */
  backend: "iptables" | "nftables";
  /** The families it covers (iptables). */
  families: Family[];
}

/**
 * Arms the unlock of `target`'s namespace lock: starts the tools that
 * remove the part that stops traffic. Without `known`, the lock is read
 * first; a target that is not locked, or not in namespace mode, is not
 * armed (`fire()` is a plain {@linkcode unlockNetwork}). With `known` (the
 * lock just fired, or the one CRIU's images hold), nothing is read, and a
 * fire that finds another state falls back to {@linkcode unlockNetwork}.
 *
 * @example
 * ```ts
 * import { armNetworkUnlock } from "./armed.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const armed = await armNetworkUnlock(1234);
 *   await armed.fire();   // traffic flows
 *   await armed.finish(); // nothing of the lock is left
 * }
 * ```
 *
 * @param target A PID, `{ pid }`, or `{ netns: PATH_OR_NAME }`.
 * @param options The options the lock was made with.
 * @param known The lock in place, when the caller knows it.
 * @returns The armed unlock.
 */
export async function armNetworkUnlock(
  target: Target,
  options: NetlockOptions = {},
  known?: KnownLock,
): Promise<ArmedUnlock> {
  const opts = resolveOptions(options, "unlock");
  let unlocked: Promise<UnlockResult> | undefined;
  const unlockOnce = () => unlocked ??= unlockNetwork(target, options);
  const plain: ArmedUnlock = { fire: unlockOnce, finish: unlockOnce, cancel: async () => {} };
  if (opts.dryRun || opts.actionScripts.length > 0 || opts.mode === "connections" || opts.all) {
    return plain;
  }
  const ref = toTargetRef(target, { userns: opts.userns });
  let status: OperationResult;
  if (known) {
    const prepared = await prepare(ref, opts, "status");
    if (prepared.mode !== "netns") return plain;
    status = namespaceResult(ref, prepared, opts, {
      backend: known.backend,
      families: known.backend === "nftables" ? prepared.families : known.families,
    }, false);
  } else {
    const read = await getLockStatus(target, options);
    if (read.state !== "locked" || read.mode !== "netns" || read.criu) return plain;
    status = read;
  }
  const stop = new AbortController();
  const spawn = primer(ref.nsenterArgs, opts.exec.log, stop.signal);
  const rules = { name: opts.name, mark: opts.mark };
  // Fired, the lock opens (an insert); deleting it inside CRIU's window
  // would wait for an RCU grace period. `finish()` removes it, after.
  const steps = status.backend === "nftables"
    ? [{ tool: spawn("nft", ["-f", "-"]), text: renderNftOpen(rules) }]
    : status.families.map((family) => ({
      tool: spawn(FAMILY_TOOLS[family].restore, ["-w", "--noflush"]),
      text: renderIptablesOpen(rules),
    }));
  return {
    async fire() {
      const start = performance.now();
      if (!await firedAll(steps, opts.exec.timeoutMs, stop)) return await unlockOnce();
      return { ...status, locked: false, changed: true, durationMs: performance.now() - start };
    },
    finish: unlockOnce,
    cancel: () => cancelAll(steps, stop),
  };
}

/** The report of a namespace lock the armed tools made or found (locked; not timed). */
function namespaceResult(
  ref: TargetRef,
  prepared: Prepared,
  opts: ResolvedOptions,
  lock: KnownLock,
  changed: boolean,
): OperationResult {
  return {
    target: { pid: ref.pid, path: ref.path, netns: prepared.probe.netns },
    locked: true,
    changed,
    mode: "netns",
    backend: lock.backend,
    families: lock.families,
    name: opts.name,
    mark: opts.mark,
    connections: 0,
    durationMs: 0,
  };
}
