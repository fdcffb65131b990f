/**
 * Target resolution: from a PID or a namespace file to the `nsenter` flags
 * that enter it, its namespace identity and whether its kernel has IPv6 —
 * all learned through spawned tools, never by reading `/proc` from Deno.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import {
  type ExecSettings,
  isPermissionProblem,
  nsenterExec,
  type ToolExec,
} from "../exec/nsenter.ts";
import { resolveNetnsPath, validatePid } from "../common/options.ts";
import { firstLine } from "../exec/runner.ts";
import type { Target } from "../common/types.ts";

/** A validated target and the `nsenter` flags that enter its network namespace. */
export interface TargetRef {
  /** The PID, for PID targets. */
  pid?: number;
  /** The namespace file, for namespace targets. */
  path?: string;
  /** How messages name it: `process 1234` or `namespace /run/netns/blue`. */
  label: string;
  /** `["--target", "1234", "--net"]` or `["--net=/run/netns/blue"]`. */
  nsenterArgs: string[];
}

/** What a probe of the target learned. */
export interface TargetProbe {
  /** The namespace identity, `net:[INODE]`. */
  netns: string;
  /** Whether `/proc/sys/net/ipv6` exists in the target (CRIU's test for IPv6). */
  ipv6: boolean;
  /** netlock's own namespace, when the probe was asked for it and could read it. */
  own?: string;
}

/**
 * Validates a target and computes how to enter it. Pure: nothing is spawned.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { toTargetRef } from "./target.ts";
 *
 * assert(toTargetRef(1234).label === "process 1234");
 * assert(toTargetRef({ netns: "blue" }).nsenterArgs[0] === "--net=/run/netns/blue");
 * ```
 *
 * @param target A PID, `{ pid }` or `{ netns }`.
 * @param options `userns`: also enter the target's user namespace (PID targets only).
 * @returns The validated target.
 */
export function toTargetRef(target: Target, options: { userns?: boolean } = {}): TargetRef {
  if (typeof target === "number" || (typeof target === "object" && target && "pid" in target)) {
    const pid = validatePid(typeof target === "number" ? target : target.pid);
    // --preserve-credentials keeps netlock's uid/gid, as CRIU's cr_system_userns does.
    const user = options.userns ? ["--user", "--preserve-credentials"] : [];
    return {
      pid,
      label: `process ${pid}`,
      nsenterArgs: ["--target", String(pid), ...user, "--net"],
    };
  }
  if (typeof target === "object" && target && typeof target.netns === "string") {
    if (options.userns) {
      throw new TypeError(
        "--userns needs a PID target: a namespace file has no user namespace to enter",
      );
    }
    const path = resolveNetnsPath(target.netns);
    return { path, label: `namespace ${path}`, nsenterArgs: [`--net=${path}`] };
  }
  throw new TypeError("Invalid target: expected a PID, { pid } or { netns }");
}

/**
 * Enters the target's network namespace once and reads its identity and
 * whether it has IPv6. Fails with `NO_SUCH_TARGET`, `NOT_A_NAMESPACE` or
 * `NOT_PERMITTED` when nsenter cannot enter it.
 *
 * @example
 * ```ts
 * import { probeTarget, toTargetRef } from "./target.ts";
 * import { nsenterExec } from "../exec/nsenter.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const ref = toTargetRef(1234);
 *   const probe = await probeTarget(ref, nsenterExec(ref.nsenterArgs, { timeoutMs: 10_000 }));
 *   console.log(probe.netns, probe.ipv6);
 * }
 * ```
 *
 * @param ref The validated target.
 * @param exec Runs a tool in the target's namespace.
 * @param ownPid netlock's PID: also read netlock's own namespace in the same spawn.
 * @returns The namespace identity and IPv6 presence.
 */
export async function probeTarget(
  ref: TargetRef,
  exec: ToolExec,
  ownPid?: number,
): Promise<TargetProbe> {
  // One spawn answers every question; stat exits 1 when a path is missing
  // (no IPv6) but still prints the lines of the others.
  const own = ownPid === undefined ? [] : [`/proc/${ownPid}/ns/net`];
  const result = await exec("stat", [
    "-L",
    "-c",
    "%n %i",
    "/proc/self/ns/net",
    ...own,
    "/proc/sys/net/ipv6",
  ]);
  const lines = result.stdout.split("\n");
  const inode = lines[0]?.match(/^\/proc\/self\/ns\/net ([0-9]+)$/)?.[1];
  if (!inode || (result.code !== 0 && result.code !== 1)) throw probeError(ref, result.stderr);
  const ownInode = own.length
    ? lines.find((line) => line.startsWith(`${own[0]} `))?.split(" ")[1]
    : undefined;
  return {
    netns: `net:[${inode}]`,
    ipv6: lines.some((line) => line.startsWith("/proc/sys/net/ipv6 ")),
    ...(ownInode ? { own: `net:[${ownInode}]` } : {}),
  };
}

let ownNetnsPromise: Promise<string> | undefined;

/**
 * The identity of netlock's own network namespace, learned once through
 * `nsenter -- stat` (which needs no privilege).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ownNetns } from "./target.ts";
 * assert((await ownNetns({ timeoutMs: 5000 })).startsWith("net:["));
 * ```
 *
 * @param settings Timeout and logger for the spawned tool.
 * @returns `net:[INODE]` of netlock's own namespace.
 */
export function ownNetns(settings: ExecSettings): Promise<string> {
  ownNetnsPromise ??= probeTarget(
    { label: "netlock's own namespace", nsenterArgs: [] },
    nsenterExec([], settings),
  ).then((probe) => probe.netns);
  ownNetnsPromise.catch(() => ownNetnsPromise = undefined);
  return ownNetnsPromise;
}

/**
 * The error for a target nsenter could not enter, from nsenter's stderr:
 * `NO_SUCH_TARGET`, `NOT_A_NAMESPACE`, `NOT_PERMITTED`, `TOOL_NOT_FOUND`
 * or `TOOL_FAILED`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { probeError, toTargetRef } from "./target.ts";
 *
 * const error = probeError(
 *   toTargetRef(99999),
 *   "nsenter: cannot open /proc/99999/ns/net: No such file or directory",
 * );
 * assert(error.code === "NO_SUCH_TARGET");
 * ```
 *
 * @param ref The target.
 * @param stderr nsenter's stderr.
 * @returns The error to throw.
 */
export function probeError(ref: TargetRef, stderr: string): NetlockError {
  const line = firstLine(stderr);
  if (/No such file or directory/.test(line) && /cannot open/.test(line)) {
    return ref.pid !== undefined
      ? new NetlockError("NO_SUCH_TARGET", "no such process")
      : new NetlockError("NO_SUCH_TARGET", `no such namespace file ${ref.path}`);
  }
  // Entering one's own user namespace is EINVAL: --userns for a process that shares it.
  if (/reassociate to namespace 'ns\/user'/.test(line) && /Invalid argument/.test(line)) {
    return new NetlockError(
      "OWN_USER_NAMESPACE",
      `--userns: ${ref.label} shares netlock's own user namespace (--userns is for a process ` +
        "in another one, such as a rootless container's)",
    );
  }
  if (/reassociate to namespace/.test(line) && /Invalid argument/.test(line)) {
    return new NetlockError(
      "NOT_A_NAMESPACE",
      `${ref.path ?? ref.label} is not a network namespace`,
    );
  }
  if (/failed to execute/.test(line)) {
    return new NetlockError("TOOL_NOT_FOUND", `cannot probe the target: ${line}`);
  }
  if (isPermissionProblem(line)) {
    return new NetlockError(
      "NOT_PERMITTED",
      `not permitted to enter the namespace: netlock needs root (CAP_SYS_ADMIN to enter, ` +
        `CAP_NET_ADMIN to lock), or --userns for a container of your own: ${line}`,
    );
  }
  return new NetlockError("TOOL_FAILED", `cannot enter the namespace: ${line || "nsenter failed"}`);
}
