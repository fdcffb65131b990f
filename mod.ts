/**
 * netlock freezes the network of a Linux process for checkpoint/restore and
 * live migration, and thaws it again: CRIU's "network lock" step
 * (`network_lock()` in criu/net.c) as a standalone library.
 *
 * While locked, every packet into and out of the target's network namespace
 * is dropped (IPv4 and IPv6, loopback included) except packets carrying the
 * mark 0xC114 (CRIU's `SOCCR_MARK`). Locks are idempotent, all or nothing
 * across families, safe under concurrent calls, and unlocking removes what
 * the lock created.
 *
 * Every look at the target goes through a spawned `nsenter`, so the only
 * Deno permission needed is `--allow-run=nsenter` (and root on the host).
 *
 * @example Lock a namespace for the length of a scope
 * ```ts
 * import { lockNetwork } from "./mod.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   {
 *     await using lock = await lockNetwork({ netns: "/run/netns/blue" });
 *     // dump the processes here: no packet reaches or leaves them
 *   } // unlocked here, also when the block throws
 * }
 * ```
 *
 * @example See every lock in a namespace, and remove them all
 * ```ts
 * import { listLocks, unlockNetwork } from "./mod.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   for (const lock of await listLocks({ netns: "blue" })) {
 *     console.log(lock.kind, lock.name, lock.pid ?? "", lock.alive ?? "");
 *   }
 *   await unlockNetwork({ netns: "blue" }, { all: true }); // every lock listed, in one transaction
 * }
 * ```
 *
 * @example Lock a process that shares the host's network: its tree's connections, or its cgroup
 * ```ts
 * import { lockNetwork } from "./mod.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   // Every TCP connection of process 1234 and its descendants (CRIU's rule
 *   // for a tree in the host's namespace), in one transaction:
 *   await using connections = await lockNetwork(1234, { mode: "connections" });
 *   // Every socket of its cgroup v2, TCP and UDP, later ones too (nftables):
 *   await using cgroup = await lockNetwork(1234, { mode: "cgroup" });
 *   console.log(connections.connections, cgroup.mode); // e.g. 200 "cgroup"
 * }
 * ```
 *
 * @example Print the cgroup lock nft would be given (no root needed)
 * ```ts
 * import assert from "node:assert/strict";
 * import { processLockName, renderNftCgroupLock } from "./mod.ts";
 *
 * const table = processLockName("NETLOCK", "cgroup", 1234);
 * const script = renderNftCgroupLock(table, 0xC114, "/system.slice/app.service", "create");
 * assert.ok(script.includes('socket cgroupv2 level 2 "system.slice/app.service" drop'));
 * ```
 *
 * @example Print CRIU's ruleset (no root needed)
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderIptablesLock } from "./mod.ts";
 *
 * const rules = renderIptablesLock({ name: "CRIU", mark: 0xC114 });
 * assert.equal(
 *   rules,
 *   "*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n" +
 *     "-A CRIU -m mark --mark 0xC114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n",
 * );
 * console.log(rules);
 * ```
 *
 * @module
 */

export {
  getLockStatus,
  listLocks,
  lockNetwork,
  unlockNetwork,
  withNetworkLock,
} from "./lib/operations.ts";
export { type ImagesResult, lockImages, unlockImages } from "./lib/criu/images.ts";
export {
  ARMED_LIFETIME_MS,
  type ArmedLock,
  type ArmedUnlock,
  armNetworkLock,
  armNetworkUnlock,
  type KnownLock,
} from "./lib/criu/armed.ts";
export type {
  Backend,
  CriuLocks,
  Family,
  Ipv6Choice,
  LockInfo,
  LockKind,
  LockRules,
  LockStatus,
  Mode,
  NetlockOptions,
  NetworkLock,
  OperationResult,
  Target,
  TargetInfo,
  UnlockResult,
} from "./lib/common/types.ts";
export { NetlockError, type NetlockErrorCode } from "./lib/common/errors.ts";
export {
  type IptablesChange,
  renderIptablesChange,
  renderIptablesLock,
  renderIptablesUnlock,
} from "./lib/iptables/ruleset.ts";
export {
  renderNftChains,
  renderNftLock,
  renderNftRelock,
  renderNftUnlock,
} from "./lib/nftables/ruleset.ts";
export {
  connectionIptablesBody,
  connectionLockName,
  type ProcessLockKind,
  processLockName,
  processLockOf,
  renderConnectionTemplate,
  renderNftCgroupLock,
  renderNftConnectionLock,
} from "./lib/connections/ruleset.ts";
export type { Connection, Listener } from "./lib/connections/proc_net_parser.ts";
export {
  assertSuccess,
  describeFailure,
  runCommand,
  type RunOptions,
  type RunResult,
} from "./lib/exec/runner.ts";
export {
  DEFAULT_MARK,
  DEFAULT_NAME,
  formatMark,
  parseMark,
  parsePid,
  validateName,
} from "./lib/common/options.ts";
export { VERSION } from "./lib/common/version.ts";
