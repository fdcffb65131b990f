/**
 * Pure renderers of the iptables-restore scripts of a namespace lock.
 *
 * @module
 */

import { formatMark } from "../common/options.ts";
import type { LockRules } from "../common/types.ts";

/** A change of the filter table, rendered by {@linkcode renderIptablesChange}. */
export interface IptablesChange {
  /** How many `-j NAME` jumps to delete from INPUT and from OUTPUT. */
  removeJumps: { input: number; output: number };
  /** What to do with the lock chain before adding rules. */
  chain: "create" | "flush" | "delete" | "keep";
  /** Whether to add the lock's rules and jumps. */
  addLock: boolean;
  /** The chains of a connection lock's tree that are there now, to remove (after the chain). */
  removeSubchains?: readonly string[];
}

/**
 * The canonical lock ruleset: CRIU's text, with the lock name in place of
 * `CRIU`. With `{ name: "CRIU", mark: 0xC114 }` it is byte for byte CRIU's.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderIptablesLock } from "./ruleset.ts";
 *
 * assert(renderIptablesLock({ name: "CRIU", mark: 0xC114 }) ===
 *   "*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n" +
 *   "-A CRIU -m mark --mark 0xC114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n");
 * ```
 *
 * @param rules The lock name and mark.
 * @returns The `iptables-restore --noflush` input.
 */
export function renderIptablesLock(rules: LockRules): string {
  return wrapFilter([`:${rules.name} - [0:0]`, ...lockLines(rules)]);
}

/**
 * The canonical unlock script of one lock: the jumps, then the chain.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderIptablesUnlock } from "./ruleset.ts";
 *
 * assert(renderIptablesUnlock({ name: "NETLOCK", mark: 0xC114 }) ===
 *   "*filter\n-D INPUT -j NETLOCK\n-D OUTPUT -j NETLOCK\n-F NETLOCK\n-X NETLOCK\nCOMMIT\n");
 * ```
 *
 * @param rules The lock name (the mark is not needed to unlock).
 * @returns The `iptables-restore --noflush` input.
 */
export function renderIptablesUnlock(rules: LockRules): string {
  return renderIptablesChange(rules, {
    removeJumps: { input: 1, output: 1 },
    chain: "delete",
    addLock: false,
  });
}

/**
 * The opening of the lock: a `RETURN` at the head of its chain, so that
 * traffic flows again while the chain and its jumps stay. With iptables-nft
 * a transaction that deletes rules waits for an RCU grace period (10-20 ms
 * here); an insert does not. Inside CRIU's window the lock is opened, and
 * removed after it (fails when the chain does not exist).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderIptablesOpen } from "./ruleset.ts";
 *
 * assert.equal(
 *   renderIptablesOpen({ name: "NETLOCK", mark: 0xC114 }),
 *   "*filter\n-I NETLOCK 1 -j RETURN\nCOMMIT\n",
 * );
 * ```
 *
 * @param rules The lock name.
 * @returns The `iptables-restore --noflush` input.
 */
export function renderIptablesOpen(rules: LockRules): string {
  return wrapFilter([`-I ${rules.name} 1 -j RETURN`]);
}

/**
 * Renders any change the planner decides: delete jumps, create / flush /
 * delete the chain, add the lock. The script is one `COMMIT`, so
 * `iptables-restore` applies all of it or nothing.
 *
 * @example Lock a clean table so that a second lock fails instead of duplicating jumps
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderIptablesChange } from "./ruleset.ts";
 *
 * const script = renderIptablesChange({ name: "NETLOCK", mark: 0xC114 }, {
 *   removeJumps: { input: 0, output: 0 }, chain: "create", addLock: true,
 * });
 * assert(script.startsWith("*filter\n-N NETLOCK\n-I INPUT -j NETLOCK\n"));
 * ```
 *
 * @param rules The lock name and mark.
 * @param change What to change.
 * @returns The `iptables-restore --noflush` input.
 */
export function renderIptablesChange(rules: LockRules, change: IptablesChange): string {
  const lines: string[] = [];
  for (let i = 0; i < change.removeJumps.input; i++) lines.push(`-D INPUT -j ${rules.name}`);
  for (let i = 0; i < change.removeJumps.output; i++) lines.push(`-D OUTPUT -j ${rules.name}`);
  if (change.chain === "create") lines.push(`-N ${rules.name}`);
  if (change.chain === "flush" || change.chain === "delete") lines.push(`-F ${rules.name}`);
  if (change.chain === "delete") lines.push(`-X ${rules.name}`);
  // The tree's chains refer to each other: all flushed, then all deleted.
  const old = change.removeSubchains ?? [];
  lines.push(...old.map((chain) => `-F ${chain}`), ...old.map((chain) => `-X ${chain}`));
  if (change.addLock) lines.push(...lockLines(rules));
  return wrapFilter(lines);
}

/**
 * The last rule of the IPv4 chain of a lock that leaves IPv6 open by choice
 * (`--ipv6 off`): after `-j DROP`, never reached, it only says so, in
 * `iptables-save` as well as to `netlock status`.
 */
export const IPV4_ONLY_MARKER = '-m comment --comment "netlock: ipv6 off" -j RETURN';

function lockLines(rules: LockRules): string[] {
  const body = Array.isArray(rules.body) ? rules.body : [
    `-m mark --mark ${formatMark(rules.mark)} -j ACCEPT`,
    dropVerdict(typeof rules.queue === "number" ? rules.queue : undefined),
    ...(rules.ipv4Only ? [IPV4_ONLY_MARKER] : []),
  ];
  const subchains = rules.subchains ?? [];
  return [
    ...subchains.map((chain) => `-N ${chain.name}`),
    `-I INPUT -j ${rules.name}`,
    `-I OUTPUT -j ${rules.name}`,
    ...body.map((spec) => `-A ${rules.name} ${spec}`),
    ...subchains.flatMap((chain) => chain.body.map((spec) => `-A ${chain.name} ${spec}`)),
  ];
}

/**
 * What a lock does with what it stops, as iptables-save prints it: `-j
 * DROP`, or, for a lock that holds, a queue to its holder (never
 * `--queue-bypass`: without a holder the kernel drops it). The namespace
 * lock's last rule, and each drop of a connection lock.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dropVerdict } from "./ruleset.ts";
 * assert.equal(dropVerdict(), "-j DROP");
 * assert.equal(dropVerdict(49428), "-j NFQUEUE --queue-num 49428");
 * ```
 *
 * @param queue The holder's queue, when the lock holds.
 * @returns The target, after the rule's matches.
 */
export function dropVerdict(queue?: number): string {
  return queue === undefined ? "-j DROP" : `-j NFQUEUE --queue-num ${queue}`;
}

function wrapFilter(lines: string[]): string {
  return ["*filter", ...lines, "COMMIT", ""].join("\n");
}
