/**
 * Pure formatting of operation results for the CLI: JSON lines and the
 * one-line human summaries.
 *
 * @module
 */

import { processLockName } from "../connections/ruleset.ts";
import { NetlockError } from "../common/errors.ts";
import type {
  CriuLocks,
  LockInfo,
  LockKind,
  LockStatus,
  OperationResult,
  UnlockResult,
} from "../common/types.ts";

/** The CLI commands that report per target. */
export type ReportCommand = "lock" | "unlock" | "status" | "list" | "run";

/** How a target is named before it was probed. */
export interface TargetName {
  /** The PID, for PID targets. */
  pid?: number;
  /** The namespace file, for namespace targets. */
  path?: string;
}

/**
 * The `--json` line for a successful operation.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { jsonSuccess } from "./report.ts";
 *
 * const line = jsonSuccess("lock", {
 *   target: { pid: 1234, netns: "net:[4026532456]" }, locked: true, changed: true,
 *   mode: "netns", backend: "iptables", families: ["ipv4"], name: "NETLOCK",
 *   mark: 0xC114, connections: 0, durationMs: 12.5,
 * });
 * assert(line.startsWith('{"command":"lock","target":{"pid":1234,'));
 * assert(line.includes('"mark":"0xc114"'));
 * ```
 *
 * @param command The command.
 * @param result What the operation returned.
 * @returns One line of JSON (no newline).
 */
export function jsonSuccess(
  command: ReportCommand,
  result: OperationResult | LockStatus | UnlockResult,
): string {
  const record: Record<string, unknown> = {
    command,
    target: targetRecord(result.target),
    ok: true,
    locked: result.locked,
    changed: result.changed,
  };
  if ("state" in result && result.state !== undefined) record.state = result.state;
  Object.assign(record, {
    mode: result.mode,
    backend: result.backend,
    families: result.families,
    name: result.name,
    mark: `0x${result.mark.toString(16)}`,
    connections: result.connections,
    durationMs: Math.round(result.durationMs * 10) / 10,
  });
  if (result.kinds) record.kinds = result.kinds;
  if ("dumped" in result) record.dumped = result.dumped;
  if (result.queue !== undefined) record.queue = result.queue;
  if (result.removed) record.removed = result.removed;
  if (result.dryRun) record.dryRun = true;
  if ("criu" in result && result.criu) record.criu = result.criu;
  if (result.warnings?.length) record.warnings = result.warnings;
  return JSON.stringify(record);
}

/**
 * The `--json` line for a failed operation.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { jsonFailure } from "./report.ts";
 *
 * const line = jsonFailure("lock", { pid: 7 }, new Error("boom"));
 * assert(line === '{"command":"lock","target":{"pid":7},"ok":false,' +
 *   '"error":{"code":"ERROR","message":"boom"}}');
 * ```
 *
 * @param command The command.
 * @param target The target as given.
 * @param error What was thrown.
 * @returns One line of JSON (no newline).
 */
export function jsonFailure(command: ReportCommand, target: TargetName, error: unknown): string {
  return JSON.stringify({
    command,
    target: targetRecord(target),
    ok: false,
    error: { code: errorCode(error), message: errorMessage(error) },
  });
}

/**
 * The `--json` line of `run`'s command: what ran and how it ended (`exitCode`),
 * or why it did not start; in a dry run, what would run.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { jsonRun } from "./report.ts";
 *
 * assert.equal(
 *   jsonRun({ path: "/run/netns/blue" }, ["criu", "dump"], { exitCode: 0 }),
 *   '{"command":"run","target":{"path":"/run/netns/blue"},"ok":true,"argv":["criu","dump"],"exitCode":0}',
 * );
 * ```
 *
 * @param target The target as given.
 * @param argv The command and its arguments.
 * @param outcome Its exit status, or why it did not start, or a dry run.
 * @returns One line of JSON (no newline).
 */
export function jsonRun(
  target: TargetName,
  argv: readonly string[],
  outcome: { exitCode?: number; error?: unknown; dryRun?: boolean },
): string {
  return JSON.stringify({
    command: "run",
    target: targetRecord(target),
    ok: outcome.error === undefined,
    argv,
    ...(outcome.exitCode === undefined ? {} : { exitCode: outcome.exitCode }),
    ...(outcome.dryRun ? { dryRun: true } : {}),
    ...(outcome.error === undefined
      ? {}
      : { error: { code: errorCode(outcome.error), message: errorMessage(outcome.error) } }),
  });
}

/**
 * The `--json` line for arguments the CLI refused (exit 2): no target was
 * resolved, so there is none in the record.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { jsonUsageError } from "./report.ts";
 *
 * assert.equal(
 *   jsonUsageError("lock", "Invalid PID \"x\""),
 *   '{"command":"lock","ok":false,"error":{"code":"INVALID_ARGUMENT","message":"Invalid PID \\"x\\""}}',
 * );
 * ```
 *
 * @param command The command word, when one was given.
 * @param message The one-line usage message.
 * @returns One line of JSON (no newline).
 */
export function jsonUsageError(command: string | undefined, message: string): string {
  return JSON.stringify({
    command: command ?? null,
    ok: false,
    error: { code: "INVALID_ARGUMENT", message },
  });
}

/**
 * The human summary of a successful operation.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { humanSuccess } from "./report.ts";
 *
 * const line = humanSuccess("unlock", {
 *   target: { path: "/run/netns/blue", netns: "net:[4026532456]" }, locked: false,
 *   changed: false, mode: "netns", backend: "iptables", families: ["ipv4"],
 *   name: "NETLOCK", mark: 0xC114, connections: 0, durationMs: 3,
 * });
 * assert(line === "namespace /run/netns/blue (net:[4026532456]) was not locked");
 * ```
 *
 * @param command The command.
 * @param result What the operation returned.
 * @returns One line (no newline).
 */
export function humanSuccess(
  command: ReportCommand,
  result: OperationResult | LockStatus | UnlockResult,
): string {
  const who = `${targetLabel(result.target)} (${result.target.netns})`;
  const what = result.backend === "nftables" ? "table inet" : "chain";
  // A lock of what a dump took is named after the dumped root (lib/criu/images.ts).
  const pid = result.target.pid ?? ("dumped" in result ? result.dumped as number : undefined);
  const lockOf = (kind: LockKind) =>
    kind === "netns" || pid === undefined ? result.name : processLockName(result.name, kind, pid);
  const kinds = result.kinds?.length ? result.kinds : [result.mode];
  // The first lock with the backend's word for it, the others by kind.
  const described = kinds.map((kind, i) => {
    const name = kind === "connections"
      ? `${lockOf(kind)} (${result.connections} connections)`
      : kind === "cgroup"
      ? `table inet ${lockOf(kind)}`
      : lockOf(kind);
    if (i === 0) return kind === "cgroup" ? `cgroup lock ${name}` : `${what} ${name}`;
    return `and ${kind === "connections" ? "connection" : "cgroup"} lock ${name}`;
  });
  const holding = result.queue === undefined ? "" : `, holding (queue ${result.queue})`;
  const how = `${result.backend}, ${result.families.join("+")}, ${described.join(", ")}${holding}`;
  const criu = "criu" in result && result.criu ? criuNote(command, result.criu) : "";
  if (command === "status" && "state" in result) {
    const state = result.state === "partial" ? "partially locked" : result.state;
    return `${who}: ${state}${result.state === "unlocked" ? "" : ` (${how})`}${criu}`;
  }
  if (command === "lock") {
    if (result.dryRun) {
      return result.changed ? `would lock ${who}: ${how}` : `${who} is already locked (${how})`;
    }
    return result.changed ? `locked ${who}: ${how}` : `${who} was already locked (${how})`;
  }
  const kindWords = {
    netns: "namespace lock",
    connections: "connection lock",
    cgroup: "cgroup lock",
  };
  const removedKinds = (result.kinds ?? []).filter((kind) =>
    result.kinds!.length > 1 || kind !== "netns"
  );
  const removed = result.removed
    ? `: ${result.removed.join(", ")}`
    : removedKinds.length > 0
    ? `: ${
      removedKinds.map((kind) => `${kindWords[kind]}${kind === "netns" ? "" : ` ${lockOf(kind)}`}`)
        .join(" and ")
    }`
    : "";
  const netlockLock = result.changed && !(criu && !result.backend)
    ? `${result.dryRun ? "would unlock" : "unlocked"} ${who}${removed}`
    : `${who} ${result.dryRun ? "is" : "was"} not locked`;
  return `${netlockLock}${criu}`;
}

function criuNote(command: ReportCommand, criu: CriuLocks): string {
  const parts = [
    ...(criu.iptables.length ? [`chain CRIU (${criu.iptables.join("+")})`] : []),
    ...criu.nftables.map((name) => `table inet ${name}`),
  ];
  if (parts.length === 0) return command === "status" ? "; no CRIU lock" : "";
  return `; CRIU's lock ${command === "status" ? "present" : "removed"}: ${parts.join(", ")}`;
}

/**
 * How a target is named in messages: `process 1234` or `namespace PATH`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { targetLabel } from "./report.ts";
 * assert(targetLabel({ pid: 1 }) === "process 1");
 * ```
 *
 * @param target The target.
 * @returns Its label.
 */
export function targetLabel(target: TargetName): string {
  return target.pid !== undefined ? `process ${target.pid}` : `namespace ${target.path}`;
}

/**
 * The stable code of an error for JSON output.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { errorCode } from "./report.ts";
 * assert(errorCode(new TypeError("bad")) === "INVALID_ARGUMENT");
 * ```
 *
 * @param error What was thrown.
 * @returns A {@linkcode NetlockError} code, `INVALID_ARGUMENT`, or `ERROR`.
 */
export function errorCode(error: unknown): string {
  if (error instanceof NetlockError) return error.code;
  if (error instanceof TypeError || error instanceof RangeError) return "INVALID_ARGUMENT";
  return "ERROR";
}

/**
 * The one-line message of an error.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { errorMessage } from "./report.ts";
 * assert(errorMessage(new Error("a\nb")) === "a b");
 * ```
 *
 * @param error What was thrown.
 * @returns Its message on one line.
 */
export function errorMessage(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/\s*\n\s*/g, " ").trim();
}

function targetRecord(target: TargetName & { netns?: string }): Record<string, unknown> {
  const record: Record<string, unknown> = {};
  if (target.pid !== undefined) record.pid = target.pid;
  if (target.path !== undefined) record.path = target.path;
  if (target.netns !== undefined) record.netns = target.netns;
  return record;
}

/**
 * The `--json` line of one lock `netlock list` found.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { jsonLock } from "./report.ts";
 *
 * const line = jsonLock({
 *   target: { pid: 42, netns: "net:[4026532456]" }, kind: "connections", name: "NETLOCK-c42",
 *   backend: "nftables", families: ["ipv4"], pid: 42, alive: false, connections: 3,
 * });
 * assert(line.startsWith('{"command":"list","target":{"pid":42,'));
 * assert(line.endsWith('"pid":42,"alive":false,"connections":3}'));
 * ```
 *
 * @param lock The lock.
 * @returns One line of JSON (no newline).
 */
export function jsonLock(lock: LockInfo): string {
  const { target, ...rest } = lock;
  return JSON.stringify({ command: "list", target: targetRecord(target), ...rest });
}

/**
 * The aligned table `netlock list` prints for people: one row per lock.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { lockTable } from "./report.ts";
 *
 * const table = lockTable([{
 *   target: { path: "/run/netns/blue", netns: "net:[4026532456]" }, kind: "netns",
 *   name: "NETLOCK", backend: "iptables", families: ["ipv4", "ipv6"],
 * }]);
 * assert(table.split("\n")[0].startsWith("NAMESPACE         KIND   NAME"));
 * ```
 *
 * @param locks The locks.
 * @returns The table, one line per lock after the header (no final newline).
 */
export function lockTable(locks: LockInfo[]): string {
  const rows = [
    [
      "NAMESPACE",
      "KIND",
      "NAME",
      "BACKEND",
      "FAMILIES",
      "PID",
      "ALIVE",
      "CONNECTIONS",
      "LISTENERS",
      "HOLDS",
    ],
    ...locks.map((lock) => [
      lock.target.netns,
      lock.kind,
      lock.name,
      lock.backend,
      lock.families.join("+"),
      lock.pid === undefined ? "-" : String(lock.pid),
      lock.alive === undefined ? "-" : lock.alive ? "yes" : "no",
      lock.connections === undefined ? "-" : String(lock.connections),
      lock.kind !== "connections" ? "-" : String(lock.listeners ?? 0),
      lock.queue === undefined ? "-" : `queue ${lock.queue}`,
    ]),
  ];
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i])).join("  ").trimEnd())
    .join("\n");
}
