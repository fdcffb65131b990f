/**
 * What a lock looks like in each backend (the iptables chain per family and
 * the nftables table), and the contexts the two backends act in for one
 * target. A namespace lock is `NAME`; a process's connections lock is in
 * lib/shape/connections.ts.
 *
 * @module
 */

import type { Connection, Listener } from "../connections/proc_net_parser.ts";
import { NetlockError } from "../common/errors.ts";
import type { IptablesContext } from "../iptables/backend.ts";
import type { ToolExec } from "../exec/nsenter.ts";
import type { IptablesLockState } from "../iptables/lock_state.ts";
import type { NftContext, NftTableLock } from "../nftables/backend.ts";
import { inspectNftLock } from "../nftables/lock_state.ts";
import { renderNftLock, renderNftRelock } from "../nftables/ruleset.ts";
import type { NftTableView } from "../nftables/view_parser.ts";
import type { Prepared, ResolvedOptions } from "../netns/prepare.ts";
import type { CriuLocks, Family, LockKind, LockRules } from "../common/types.ts";

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
  /** How nft must be run to apply it (a cgroup lock's nft needs cgroup v2 where it looks). */
  nftExec?(exec: ToolExec): ToolExec;
}

/**
 * The shape of a namespace lock: the one to make (`lock`), or the one to
 * find (`read`: status and unlock take the lock of that name whatever its
 * mark, and whether it leaves IPv6 open).
 *
 * @param opts The validated options (name, mark, IPv6 choice).
 * @param purpose `lock` (default) or `read`.
 * @returns The chain `NAME` and the table `inet NAME`.
 */
export function namespaceShape(
  opts: ResolvedOptions,
  purpose: "lock" | "read" = "lock",
): LockShape {
  const rules: LockRules = purpose === "read"
    ? { name: opts.name, mark: opts.mark, anyMark: true, queue: "any" }
    : {
      name: opts.name,
      mark: opts.mark,
      ipv4Only: opts.ipv6 === "off",
      ...(opts.queue === undefined ? {} : { queue: opts.queue }),
    };
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
  /** Status: the queue a namespace lock that holds sends what it stops to. */
  queue?: number;
  /** The connections a connection lock was made for (not reported: the CRIU hook keeps their keys). */
  lockedConnections?: readonly Connection[];
  /** The listeners a connection lock was made for (the CRIU hook's). */
  lockedListeners?: readonly Listener[];
  /** Problems that did not stop the operation. */
  warnings?: string[];
  /** Unlock: the names of the locks removed. */
  locks?: string[];
  /** Status: the kinds of lock found. */
  kinds?: LockKind[];
  /** Status: the mark the lock found lets through. */
  mark?: number;
  /** Status: the families the lock found covers, when fewer than the namespace has. */
  families?: Family[];
  /** Lock: the handle of the nftables table this call made (its own unlock deletes by it). */
  table?: number;
}

/**
 * The iptables backend's context for `shape` on the prepared target.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @param shape The lock.
 * @returns The context.
 */
export function iptablesContext(
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
    rollbackExec: prepared.patientExec,
  };
}

/**
 * The nftables backend's context for `shape` on the prepared target.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @param shape The lock.
 * @returns The context.
 */
export function nftContext(
  prepared: Prepared,
  opts: ResolvedOptions,
  shape: LockShape,
): NftContext {
  return {
    exec: shape.nftExec?.(prepared.exec) ?? prepared.exec,
    rules: { name: shape.name, mark: opts.mark },
    dryRun: opts.dryRun,
    log: opts.exec.log,
  };
}

/**
 * The backend a lock is made with when `backend` is `auto` or `nftables`
 * (nftables), or `iptables`.
 *
 * @param opts The validated options.
 * @returns The backend.
 */
export function requestedBackend(opts: ResolvedOptions): BackendName {
  return opts.backend === "iptables" ? "iptables" : "nftables";
}

/**
 * Whether an error says a tool is not installed.
 *
 * @param error What was thrown.
 * @returns `true` for `TOOL_NOT_FOUND`.
 */
export function missingToolError(error: unknown): boolean {
  return error instanceof NetlockError && error.code === "TOOL_NOT_FOUND";
}
