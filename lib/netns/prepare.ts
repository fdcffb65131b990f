/**
 * What every operation does first: validate the options, probe the target,
 * decide the mode and the families.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { type ExecSettings, nsenterExec, type ToolExec } from "../exec/nsenter.ts";
import type { RunResult } from "../exec/runner.ts";
import {
  type Backend,
  CGROUP_IS_NFTABLES,
  DEFAULT_MARK,
  DEFAULT_NAME,
  DEFAULT_TIMEOUT_MS,
  IPV6_IS_IPTABLES,
  type Ipv6Choice,
  type Mode,
  MODES,
  parseChoice,
  validateMark,
  validateName,
  validateScriptPath,
  validateTimeoutMs,
} from "../common/options.ts";
import { ownNetns, probeTarget, type TargetProbe, type TargetRef } from "./target.ts";
import { guardedTarget } from "./guard.ts";
import type { Family, LockKind, NetlockOptions } from "../common/types.ts";

/** Options after validation, with every default filled in. */
export interface ResolvedOptions {
  /** The backend asked for. */
  backend: Backend;
  /** The mode asked for. */
  mode: Mode;
  /** The mark that passes the lock. */
  mark: number;
  /** The lock name. */
  name: string;
  /** The IPv6 choice. */
  ipv6: Ipv6Choice;
  /** Whether locking netlock's own namespace is allowed. */
  force: boolean;
  /** Only report what would be done. */
  dryRun: boolean;
  /** Also see and remove the locks CRIU itself left (status and unlock). */
  criu: boolean;
  /** Action scripts, CRIU's contract. */
  actionScripts: string[];
  /** Enter the target's user namespace too. */
  userns: boolean;
  /** The NFQUEUE number an iptables namespace lock queues to, for a holder. */
  queue?: number;
  /** Unlock: every lock of netlock's with this name in the namespace. */
  all: boolean;
  /** How tools are spawned. */
  exec: ExecSettings;
}

/** Which operation is being prepared. */
export type Verb = "lock" | "unlock" | "status";

/** A target ready for a backend. */
export interface Prepared {
  /** The probe's findings. */
  probe: TargetProbe;
  /** Runs a tool in the target's namespace. */
  exec: ToolExec;
  /**
   * Runs a tool there with at least the default timeout: what undoes a
   * failed change must get a fair chance under a short `--timeout`.
   */
  patientExec: ToolExec;
  /** `netns` (the whole namespace) or `connections` (the process's TCP connections). */
  mode: LockKind;
  /**
   * The PID does not exist: only its connection lock in netlock's own
   * namespace is looked for, and finding none is "no such process".
   */
  gone?: boolean;
  /** The families to act on. */
  families: Family[];
  /**
   * Unlock: reads started together with the probe (they do not depend on
   * it), to save a round of spawns: `nft -j list chains` and `iptables -V`.
   */
  prefetch?: { ruleset?: Promise<RunResult>; flavour: Promise<RunResult> };
  /**
   * A guarded lock (see {@linkcode prepareGuarded}) learns the probe while
   * it works: this completes `probe` and `families` afterwards.
   */
  settle?: () => Promise<void>;
}

/**
 * Validates library options and fills in defaults. Throws `TypeError` or
 * `RangeError` on a bad value, before anything runs.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resolveOptions } from "./prepare.ts";
 * assert(resolveOptions({}).name === "NETLOCK");
 * ```
 *
 * @param options The caller's options.
 * @param verb The operation they are for, when known (`all` is for unlock only).
 * @returns The validated options.
 */
export function resolveOptions(options: NetlockOptions = {}, verb?: Verb): ResolvedOptions {
  if (options.all && verb !== undefined && verb !== "unlock") {
    throw new TypeError(`all is an unlock option; ${verb} takes no all`);
  }
  if (options.mode === "cgroup" && options.backend === "iptables") {
    throw new TypeError(CGROUP_IS_NFTABLES);
  }
  if (
    verb === "lock" && (options.ipv6 ?? "auto") !== "auto" &&
    (options.backend ?? "iptables") !== "iptables"
  ) {
    throw new TypeError(IPV6_IS_IPTABLES);
  }
  return {
    backend: parseChoice(
      "backend",
      options.backend ?? "iptables",
      [
        "iptables",
        "nftables",
        "auto",
      ] as const,
    ),
    mode: parseChoice("mode", options.mode ?? "auto", MODES),
    mark: validateMark(options.mark ?? DEFAULT_MARK),
    name: validateName(options.name ?? DEFAULT_NAME),
    ipv6: parseChoice("ipv6", options.ipv6 ?? "auto", ["auto", "on", "off"] as const),
    force: options.force ?? false,
    dryRun: options.dryRun ?? false,
    criu: options.criu ?? false,
    actionScripts: (options.actionScripts ?? []).map(validateScriptPath),
    userns: options.userns ?? false,
    ...(options.queue === undefined ? {} : { queue: validateQueue(options.queue) }),
    all: validateAll(options),
    exec: {
      timeoutMs: validateTimeoutMs(options.timeoutMs ?? DEFAULT_TIMEOUT_MS),
      signal: options.signal,
      log: options.log,
    },
  };
}

/** A queue number: 0-65535. */
function validateQueue(queue: number): number {
  if (!Number.isInteger(queue) || queue < 0 || queue > 65535) {
    throw new RangeError(`queue must be a number from 0 to 65535, not ${queue}`);
  }
  return queue;
}

/**
 * Probes the target and decides the mode and the families. Auto mode is
 * CRIU's rule: lock the namespace, unless the target shares netlock's own
 * namespace, where that would cut the machine off; then lock the process's
 * connections. `--mode netns` on netlock's own namespace is refused without
 * `force`. Unlock and status of a PID whose process has exited look for its
 * connection lock in netlock's own namespace, where it was made.
 *
 * @param ref The validated target.
 * @param options The validated options.
 * @param verb The operation.
 * @returns The probe, the mode, the exec and the families.
 */
export async function prepare(
  ref: TargetRef,
  options: ResolvedOptions,
  verb: Verb,
): Promise<Prepared> {
  if ((options.mode === "connections" || options.mode === "cgroup") && ref.pid === undefined) {
    throw new TypeError(`--mode ${options.mode} needs a PID target, not --netns`);
  }
  let exec = nsenterExec(ref.nsenterArgs, options.exec);
  // Unlock: read the whole ruleset (set elements omitted, -t) in the probe's
  // round. A connection lock may hold 20,000 rules, too many to list: if the
  // probe says connection mode, that read is cancelled (nft is killed).
  const cancelRuleset = new AbortController();
  // (`all` may meet connection locks anywhere: it lists chains instead.)
  let prefetch: Prepared["prefetch"] =
    verb === "unlock" && !options.dryRun && options.mode !== "connections"
      ? {
        ruleset: options.all
          ? undefined
          : exec("nft", ["-t", "-j", "list", "ruleset"], undefined, cancelRuleset.signal),
        flavour: exec("iptables", ["-V"]),
      }
      : undefined;
  // Settled either way; a prefetch for a target that turns out gone is dropped.
  prefetch?.ruleset?.catch(() => {});
  prefetch?.flavour.catch(() => {});
  // A process lock in netlock's own namespace is made and read from there:
  // the process may exit meanwhile, and its /proc/PID/ns/net with it.
  const needOwn = !options.all && !(options.mode === "netns" && options.force);
  // The probe reads netlock's own namespace too (/proc/<netlock's PID>/ns/net);
  // only if it cannot, a second spawn asks from netlock's side.
  const [probed] = await Promise.allSettled([
    probeTarget(ref, exec, needOwn ? Deno.pid : undefined),
  ]);
  let probe: TargetProbe;
  let mode: LockKind;
  let gone = false;
  let ownNamespace = false;
  if (probed.status === "fulfilled") {
    probe = probed.value;
    const own = needOwn ? probe.own ?? await ownNetns(options.exec) : undefined;
    const isOwn = probe.netns === own;
    mode = options.all
      ? "netns"
      : options.mode === "auto"
      ? (isOwn ? "connections" : "netns")
      : options.mode;
    if (verb === "lock" && mode === "netns" && isOwn && !options.force) refuseOwnNamespace();
    if (mode === "connections" && ref.pid === undefined) refuseOwnNamespace();
    if (mode === "connections" && prefetch) {
      cancelRuleset.abort();
      prefetch = undefined;
    }
    if (mode !== "netns" && isOwn) {
      exec = nsenterExec([], options.exec);
      ownNamespace = true;
    }
  } else {
    // The process is gone: its connection lock, if any, is in netlock's own namespace.
    const missing = probed.reason instanceof NetlockError &&
      probed.reason.code === "NO_SUCH_TARGET";
    if (
      !missing || verb === "lock" || ref.pid === undefined || options.mode === "netns" ||
      options.all
    ) {
      throw probed.reason;
    }
    exec = nsenterExec([], options.exec);
    cancelRuleset.abort();
    prefetch = undefined;
    probe = await probeTarget({ label: "netlock's own namespace", nsenterArgs: [] }, exec);
    mode = "connections";
    gone = true;
    ownNamespace = true;
  }
  const withIpv6 = options.ipv6 === "on" ||
    (options.ipv6 === "auto" && probe.ipv6) ||
    ((verb === "unlock" || mode === "connections") && options.ipv6 !== "off" && probe.ipv6);
  return {
    probe,
    exec,
    patientExec: patient(ownNamespace ? [] : ref.nsenterArgs, options),
    mode,
    families: withIpv6 ? ["ipv4", "ipv6"] : ["ipv4"],
    prefetch,
    ...(gone ? { gone } : {}),
  };
}

/**
 * Whether an operation can take the guarded fast path: a plain namespace
 * lock (no dry run, no action scripts, which must run after the mode is
 * decided and before anything is applied).
 *
 * @param options The validated options.
 * @param verb The operation.
 * @returns `true` for the fast path.
 */
export function canGuard(options: ResolvedOptions, verb: Verb): boolean {
  return verb === "lock" && !options.dryRun && options.actionScripts.length === 0 &&
    (options.mode === "auto" || options.mode === "netns");
}

/**
 * The lock's fast path: no probe spawn before the lock. The first tools run
 * behind the guard (lib/netns/guard.ts), which refuses netlock's own namespace
 * (unless `--mode netns --force`), skips IPv6 where the kernel has none, and
 * reports the namespace's identity. A {@linkcode GuardRefusal} for the own
 * namespace sends the caller to {@linkcode prepare}, which decides
 * connection mode or refuses.
 *
 * @param ref The validated target.
 * @param options The validated options.
 * @returns A namespace-mode target; `settle()` completes its probe.
 */
export function prepareGuarded(ref: TargetRef, options: ResolvedOptions): Prepared {
  const check = !(options.mode === "netns" && options.force);
  const target = guardedTarget(ref, options.exec, {
    ownPid: check ? Deno.pid : undefined,
    checkIpv6: options.ipv6 === "auto",
  });
  const prepared: Prepared = {
    probe: { netns: "", ipv6: options.ipv6 !== "off" },
    exec: target.exec,
    patientExec: patient(ref.nsenterArgs, options),
    mode: "netns",
    families: options.ipv6 === "off" ? ["ipv4"] : ["ipv4", "ipv6"],
    async settle() {
      // Without the inode in fdinfo (Linux < 5.14) the guard could not tell it: probe.
      const report = target.report();
      prepared.probe = report?.netns
        ? { netns: report.netns, ipv6: report.ipv6 }
        : await probeTarget(ref, nsenterExec(ref.nsenterArgs, options.exec));
      if (options.ipv6 === "auto" && !prepared.probe.ipv6) prepared.families = ["ipv4"];
    },
  };
  return prepared;
}

/**
 * Rewraps an operation's error with what was being done to which target:
 * `Cannot lock network of process 1234: no such process`. Argument errors
 * pass through unchanged.
 *
 * @param error What was thrown.
 * @param verb The operation.
 * @param ref The target.
 * @returns The error to throw.
 */
export function inContext(error: unknown, verb: Verb, ref: TargetRef): unknown {
  if (!(error instanceof NetlockError)) return error;
  const what = verb === "status" ? "read the network lock of" : `${verb} network of`;
  return new NetlockError(error.code, `Cannot ${what} ${ref.label}: ${error.message}`, {
    cause: error,
  });
}

function patient(nsenterArgs: readonly string[], options: ResolvedOptions): ToolExec {
  const timeoutMs = Math.max(options.exec.timeoutMs, DEFAULT_TIMEOUT_MS);
  return nsenterExec(nsenterArgs, { ...options.exec, timeoutMs });
}

function validateAll(options: NetlockOptions): boolean {
  if (!options.all) return false;
  if (options.mode !== undefined && options.mode !== "auto") {
    throw new TypeError("all removes every lock of the namespace: it takes no mode");
  }
  return true;
}

function refuseOwnNamespace(): never {
  throw new NetlockError(
    "OWN_NAMESPACE",
    "refusing to lock netlock's own network namespace (it would cut this machine off); " +
      "lock the process's connections (--mode connections, a PID target), or add --force",
  );
}

/**
 * The families a lock of `backend` covers on the prepared target: an
 * nftables lock (one `inet` table) every family the kernel has, an
 * iptables lock the families it was applied to.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { familiesOf } from "./prepare.ts";
 *
 * const prepared = { probe: { netns: "net:[1]", ipv6: false }, families: ["ipv4" as const] };
 * assert.deepEqual(familiesOf("nftables", prepared), ["ipv4"]);
 * ```
 *
 * @param backend The lock's backend.
 * @param prepared The probed target (its IPv6, its families).
 * @returns The families.
 */
export function familiesOf(
  backend: "iptables" | "nftables",
  prepared: Pick<Prepared, "probe" | "families">,
): Family[] {
  if (backend === "iptables") return prepared.families;
  return prepared.probe.ipv6 ? ["ipv4", "ipv6"] : ["ipv4"];
}
