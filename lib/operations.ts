/**
 * The lock, unlock and status operations: they tie target resolution, the
 * planner-driven backend and the result reports together.
 *
 * @module
 */

import { runActionScripts, type ScriptAction } from "./exec/action_scripts.ts";
import { connectionShape } from "./shape/connections.ts";
import { cgroupShape } from "./shape/cgroup.ts";
import { lockCgroup, lockConnections } from "./lock/process.ts";
import { processLockOf } from "./connections/ruleset.ts";
import type { Connection, Listener } from "./connections/proc_net_parser.ts";
import { lockWithBackend } from "./lock/apply.ts";
import { statusAllBackends } from "./lock/status.ts";
import { type LockShape, type NamespaceOutcome, namespaceShape } from "./shape/shape.ts";
import { unlockAllBackends } from "./unlock/backends.ts";
import { unlockMadeTable } from "./unlock/made_table.ts";
import { GuardRefusal } from "./netns/guard.ts";
import {
  canGuard,
  familiesOf,
  inContext,
  prepare,
  type Prepared,
  prepareGuarded,
  type ResolvedOptions,
  resolveOptions,
  type Verb,
} from "./netns/prepare.ts";
import { type TargetRef, toTargetRef } from "./netns/target.ts";
import { NetlockError } from "./common/errors.ts";
import { readLockInventory } from "./lock/list.ts";
import { nsenterExec } from "./exec/nsenter.ts";
import type {
  Family,
  LockInfo,
  LockKind,
  LockStatus,
  NetlockOptions,
  NetworkLock,
  OperationResult,
  Target,
  UnlockResult,
} from "./common/types.ts";

/**
 * Locks the network of a target: every packet in and out of its network
 * namespace is dropped, except packets with the mark (default 0xC114).
 * Idempotent (a second lock changes nothing), all or nothing across IPv4 and
 * IPv6, and safe under concurrent calls.
 *
 * @example Lock a namespace for the length of a scope
 * ```ts
 * import { lockNetwork } from "./operations.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   {
 *     await using lock = await lockNetwork({ netns: "blue" });
 *     console.log(lock.families); // ["ipv4", "ipv6"]
 *   } // unlocked here
 * }
 * ```
 *
 * @param target A PID, `{ pid }`, or `{ netns: PATH_OR_NAME }`.
 * @param options Backend, mode, mark, name, IPv6, timeout, signal, dry run, logger.
 * @returns The lock; call `unlock()` or let `await using` remove it.
 */
export async function lockNetwork(
  target: Target,
  options: NetlockOptions = {},
): Promise<NetworkLock> {
  const { table, ...result } = await run(target, options, "lock", async (prepared, opts, ref) => {
    await runScripts(opts, ref, "network-lock");
    if (prepared.mode === "netns") {
      return await lockWithBackend(prepared, opts, namespaceShape(opts));
    }
    return prepared.mode === "cgroup"
      ? await lockCgroup(prepared, opts, ref.pid!)
      : await lockConnections(prepared, opts, ref.pid!);
  });
  return asNetworkLock(result, target, options, table);
}

/**
 * Locks the TCP connections and listeners of the process tree of `pid`
 * (connection mode, as {@linkcode lockNetwork} does, and the tree's
 * listening sockets: what a dump takes), and says which it locked: the
 * CRIU hook keeps them, to add at `post-dump` only those CRIU dumped beyond
 * them, without probing the tree a second time.
 *
 * @example
 * ```ts
 * import { lockConnectionsOf } from "./operations.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const { result, locked, listeners } = await lockConnectionsOf(1234, { backend: "nftables" });
 *   console.log(result.connections === locked.length, listeners.length);
 * }
 * ```
 *
 * @param pid The tree's root.
 * @param options As for {@linkcode lockNetwork} (the mode is `connections`).
 * @returns The lock's report, and the connections and listeners it was made for.
 */
export async function lockConnectionsOf(
  pid: number,
  options: NetlockOptions = {},
): Promise<
  { result: OperationResult; locked: readonly Connection[]; listeners: readonly Listener[] }
> {
  let locked: readonly Connection[] = [];
  let listeners: readonly Listener[] = [];
  const result = await run(
    pid,
    { ...options, mode: "connections" },
    "lock",
    async (p, opts, ref) => {
      await runScripts(opts, ref, "network-lock");
      const outcome = await lockConnections(p, opts, ref.pid!, true);
      locked = outcome.lockedConnections ?? [];
      listeners = outcome.lockedListeners ?? [];
      return outcome;
    },
  );
  return { result, locked, listeners };
}

/**
 * Wraps a lock's result into a {@linkcode NetworkLock}: `unlock()` (once)
 * and `await using` disposal. When the lock made an nftables table (its
 * handle is `table`), `unlock()` first deletes that very table in one
 * transaction with no read before it; if that table is no longer there
 * under its name, it unlocks as {@linkcode unlockNetwork} does.
 *
 * @param result What the lock reported.
 * @param target The locked target.
 * @param options The options it was locked with.
 * @param table The handle of the nftables table the lock made.
 * @returns The lock.
 */
export function asNetworkLock(
  result: OperationResult,
  target: Target,
  options: NetlockOptions,
  table?: number,
): NetworkLock {
  let unlocking: Promise<UnlockResult> | undefined;
  const unlock = () =>
    unlocking ??= (table === undefined
      ? Promise.resolve(undefined)
      : unlockMade(result, target, options, table))
      .then((done) =>
        done ?? unlockNetwork(target, options)
      );
  return {
    ...result,
    unlock,
    async [Symbol.asyncDispose]() {
      await unlock();
    },
  };
}

/**
 * The unlock of the table a namespace lock made, by its handle
 * (lib/unlock/made_table.ts); `undefined` when it does not apply (action
 * scripts to run, a dry run, CRIU's locks asked for) or the table is no
 * longer that one, and nothing changed.
 */
async function unlockMade(
  result: OperationResult,
  target: Target,
  options: NetlockOptions,
  table: number,
): Promise<UnlockResult | undefined> {
  if (result.backend !== "nftables" || result.mode !== "netns") return undefined;
  if (options.dryRun || options.criu || (options.actionScripts?.length ?? 0) > 0) return undefined;
  const start = performance.now();
  try {
    const opts = resolveOptions(options, "unlock");
    const ref = toTargetRef(target, { userns: opts.userns });
    if (!await unlockMadeTable(nsenterExec(ref.nsenterArgs, opts.exec), result.name, table)) {
      return undefined;
    }
  } catch {
    // Whatever went wrong changed nothing: the full unlock says what.
    return undefined;
  }
  return {
    target: result.target,
    locked: false,
    changed: true,
    mode: "netns",
    backend: "nftables",
    families: result.families,
    name: result.name,
    mark: result.mark,
    connections: 0,
    durationMs: performance.now() - start,
    kinds: ["netns"],
  };
}

/**
 * Removes netlock's lock from a target. Unlocking an unlocked target
 * succeeds with `changed: false`. What the lock created (the lock chain, and
 * the filter table iptables-nft created for it) is removed; the namespace's
 * other rules are left alone.
 *
 * @example
 * ```ts
 * import { unlockNetwork } from "./operations.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const result = await unlockNetwork(1234);
 *   console.log(result.changed);
 * }
 * ```
 *
 * @param target A PID, `{ pid }`, or `{ netns: PATH_OR_NAME }`.
 * @param options The options the lock was made with (name, backend, ...).
 * @returns What was done.
 */
export function unlockNetwork(target: Target, options: NetlockOptions = {}): Promise<UnlockResult> {
  return run(
    target,
    options,
    "unlock",
    async (prepared, opts, ref) => {
      // A failing unlock script is reported; the unlock still happens.
      const warnings: string[] = [];
      await runScripts(opts, ref, "network-unlock").catch((error: Error) => {
        warnings.push(error.message);
      });
      const outcome = await unlockAllBackends(
        prepared,
        opts,
        opts.all
          ? { allOf: opts.name }
          : { shapes: shapesOf(prepared, opts, ref).map(({ shape }) => shape) },
      );
      const all = [...warnings, ...(outcome.warnings ?? [])];
      return all.length ? { ...outcome, warnings: all } : outcome;
    },
  );
}

/**
 * Reads whether a target is locked: `locked`, `unlocked`, or `partial` when
 * only part of a lock is present (for example one family).
 *
 * @example
 * ```ts
 * import { getLockStatus } from "./operations.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const status = await getLockStatus({ netns: "blue" });
 *   console.log(status.state);
 * }
 * ```
 *
 * @param target A PID, `{ pid }`, or `{ netns: PATH_OR_NAME }`.
 * @param options The options the lock was made with (name, mark, ...).
 * @returns The lock's state.
 */
export async function getLockStatus(
  target: Target,
  options: NetlockOptions = {},
): Promise<LockStatus> {
  const result = await run(
    target,
    { ...options, dryRun: false },
    "status",
    (prepared, opts, ref) => statusAllBackends(prepared, opts, shapesOf(prepared, opts, ref)),
  );
  return { ...result, state: result.state ?? "unlocked" };
}

/**
 * Lists every lock of netlock's in a namespace: the namespace lock and each
 * connection lock (with its PID, whether that process still exists, and its
 * connection count), in either backend; with `criu`, CRIU's leftovers too.
 * Without a target, netlock's own namespace. Needs what `getLockStatus`
 * needs.
 *
 * @example
 * ```ts
 * import { listLocks } from "./operations.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   for (const lock of await listLocks({ netns: "blue" })) {
 *     console.log(lock.kind, lock.name, lock.backend, lock.pid ?? "");
 *   }
 * }
 * ```
 *
 * @param target A PID (its namespace), `{ pid }`, `{ netns: PATH_OR_NAME }`,
 *   or nothing for netlock's own namespace.
 * @param options The lock name, `criu`, `ipv6`, timeout, signal, logger.
 * @returns The locks found; empty when there is none.
 */
export async function listLocks(
  target?: Target,
  options: NetlockOptions = {},
): Promise<LockInfo[]> {
  const opts = resolveOptions({ ...options, mode: "netns", force: true }, "status");
  const ref: TargetRef = target === undefined
    ? { label: "netlock's own namespace", nsenterArgs: [] }
    : toTargetRef(target, { userns: opts.userns });
  try {
    const prepared = await prepare(ref, opts, "status");
    const locks = await readLockInventory({
      exec: prepared.exec,
      ownExec: nsenterExec([], opts.exec),
      families: prepared.families,
      name: opts.name,
      criu: opts.criu,
    });
    const where = { pid: ref.pid, path: ref.path, netns: prepared.probe.netns };
    return locks.map((lock) => ({ target: where, ...lock }));
  } catch (error) {
    if (!(error instanceof NetlockError)) throw error;
    throw new NetlockError(error.code, `Cannot list the locks of ${ref.label}: ${error.message}`, {
      cause: error,
    });
  }
}

/**
 * Runs `fn` while the target is locked and unlocks afterwards, whether `fn`
 * returns or throws.
 *
 * @example
 * ```ts
 * import { withNetworkLock } from "./operations.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const checkpoint = await withNetworkLock(1234, async () => {
 *     return "dumped"; // dump the process here
 *   });
 * }
 * ```
 *
 * @param target A PID, `{ pid }`, or `{ netns: PATH_OR_NAME }`.
 * @param fn The work to do while locked; receives the lock.
 * @param options Lock options.
 * @returns What `fn` returned.
 */
export async function withNetworkLock<T>(
  target: Target,
  fn: (lock: NetworkLock) => T | Promise<T>,
  options: NetlockOptions = {},
): Promise<T> {
  await using lock = await lockNetwork(target, options);
  return await fn(lock);
}

type Body = (
  prepared: Prepared,
  options: ResolvedOptions,
  ref: TargetRef,
) => Promise<NamespaceOutcome>;

async function runScripts(
  opts: ResolvedOptions,
  ref: TargetRef,
  action: ScriptAction,
): Promise<void> {
  if (opts.actionScripts.length === 0) return;
  if (opts.dryRun) {
    for (const script of opts.actionScripts) {
      opts.exec.log?.(`would run action script ${script} (${action})`);
    }
    return;
  }
  const netnsPath = ref.path ?? `/proc/${ref.pid}/ns/net`;
  await runActionScripts(opts.actionScripts, action, { pid: ref.pid, netnsPath }, opts.exec);
}

/**
 * The locks status and unlock look for: the mode's lock, or in `auto` mode
 * the PID's connection and cgroup locks (in netlock's own namespace, or
 * after the process exited), and for a PID in another namespace its
 * namespace lock too.
 */
function shapesOf(
  prepared: Prepared,
  opts: ResolvedOptions,
  ref: TargetRef,
): { kind: LockKind; shape: LockShape }[] {
  const namespace = { kind: "netns" as const, shape: namespaceShape(opts, "read") };
  if (ref.pid === undefined) return [namespace];
  const connections = {
    kind: "connections" as const,
    shape: connectionShape(opts.name, opts.mark, ref.pid),
  };
  const cgroup = { kind: "cgroup" as const, shape: cgroupShape(opts.name, opts.mark, ref.pid) };
  if (opts.mode !== "auto") {
    return [{ netns: namespace, connections, cgroup }[opts.mode]];
  }
  return prepared.mode === "netns" ? [namespace, connections, cgroup] : [connections, cgroup];
}

async function run(
  target: Target,
  options: NetlockOptions,
  verb: Verb,
  body: Body,
): Promise<OperationResult & Pick<NamespaceOutcome, "state" | "criu" | "table">> {
  const start = performance.now();
  // Arguments are checked before anything runs; these throw TypeError/RangeError.
  const opts = resolveOptions(options, verb);
  const ref: TargetRef = toTargetRef(target, { userns: opts.userns });
  try {
    let prepared = canGuard(opts, verb)
      ? prepareGuarded(ref, opts)
      : await prepare(ref, opts, verb);
    let outcome: NamespaceOutcome;
    try {
      outcome = await body(prepared, opts, ref);
      if (prepared.gone && !foundAny(outcome)) throw noSuchProcess();
      await prepared.settle?.();
    } catch (error) {
      // The guard stopped before anything ran: the full probe decides
      // (connection mode, or the refusal of netlock's own namespace).
      if (!prepared.settle || !(error instanceof GuardRefusal)) throw error;
      prepared = await prepare(ref, opts, verb);
      outcome = await body(prepared, opts, ref);
    }
    const families: Family[] = outcome.families ?? familiesOf(outcome.backend, prepared);
    const removedKinds = (outcome.locks ?? []).map((name) => kindOf(name, opts.name));
    const kinds = verb === "unlock"
      ? (["netns", "connections", "cgroup"] as const).filter((kind) => removedKinds.includes(kind))
      : outcome.kinds;
    return {
      target: { pid: ref.pid, path: ref.path, netns: prepared.probe.netns },
      // With `criu`, a lock CRIU left also counts: the namespace is frozen either way.
      locked: verb === "lock" ||
        (verb === "status" && (outcome.state === "locked" || hasCriuLock(outcome))),
      changed: outcome.changed,
      // The kind found (status) or removed (unlock), else the kind looked for.
      mode: kinds?.[0] ?? prepared.mode,
      backend: outcome.backend,
      families,
      name: opts.name,
      // Status reports the mark of the lock it found.
      mark: outcome.mark ?? opts.mark,
      connections: outcome.connections ?? 0,
      durationMs: performance.now() - start,
      ...(outcome.state ? { state: outcome.state } : {}),
      ...(outcome.queue !== undefined ? { queue: outcome.queue } : {}),
      ...(outcome.table !== undefined ? { table: outcome.table } : {}),
      ...(outcome.criu ? { criu: outcome.criu } : {}),
      ...(outcome.warnings ? { warnings: outcome.warnings } : {}),
      ...(kinds ? { kinds } : {}),
      ...(verb === "unlock" && opts.all ? { removed: outcome.locks ?? [] } : {}),
      ...(opts.dryRun ? { dryRun: true } : {}),
    };
  } catch (error) {
    throw inContext(error, verb, ref);
  }
}

/** Whether status found, or unlock removed, any lock (or CRIU's, with `criu`). */
function foundAny(outcome: NamespaceOutcome): boolean {
  return outcome.changed || (outcome.state !== undefined && outcome.state !== "unlocked") ||
    hasCriuLock(outcome);
}

/**
 * A PID that does not exist, and left no connection lock in netlock's own
 * namespace: a lock it left elsewhere is reached through its namespace.
 */
function noSuchProcess(): NetlockError {
  return new NetlockError(
    "NO_SUCH_TARGET",
    "no such process, and no connection lock of it in netlock's own namespace (a lock it " +
      "left in another namespace: netlock list --netns PATH shows it, " +
      "netlock unlock --all --netns PATH removes it)",
  );
}

function kindOf(lockName: string, name: string): LockKind {
  return processLockOf(lockName, name)?.kind ?? "netns";
}

function hasCriuLock(outcome: NamespaceOutcome): boolean {
  return (outcome.criu?.iptables.length ?? 0) + (outcome.criu?.nftables.length ?? 0) > 0;
}
