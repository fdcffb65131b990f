/**
 * Pure renderers of the `nft -f -` scripts of the nftables namespace lock:
 * one table `inet NAME` whose `input` and `output` base chains drop
 * everything but packets with the mark.
 *
 * @module
 */

import type { LockRules } from "../iptables/ruleset.ts";

/**
 * The table definition itself, as `nft list table` would show it.
 *
 * @example
 * ```ts
 * import { renderNftTable } from "./ruleset.ts";
 *
 * console.assert(renderNftTable({ name: "NETLOCK", mark: 0xC114 }).startsWith(
 *   "table inet NETLOCK {\n\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n",
 * ));
 * ```
 *
 * @param rules The table name and the mark.
 * @returns The `table inet NAME { ... }` block.
 */
export function renderNftTable(rules: LockRules): string {
  const chain = (hook: "input" | "output") =>
    `\tchain ${hook} {\n` +
    `\t\ttype filter hook ${hook} priority 0; policy drop;\n` +
    `\t\tmeta mark 0x${rules.mark.toString(16)} accept\n` +
    `\t}\n`;
  return `table inet ${rules.name} {\n${chain("input")}${chain("output")}}\n`;
}

/**
 * The lock: one transaction that creates the table, or fails as a whole
 * when it already exists (so a second lock changes nothing).
 *
 * @example
 * ```ts
 * import { renderNftLock } from "./ruleset.ts";
 *
 * console.assert(renderNftLock({ name: "CRIU", mark: 0xC114 }).startsWith(
 *   "create table inet CRIU\ntable inet CRIU {\n",
 * ));
 * ```
 *
 * @param rules The table name and the mark.
 * @returns The `nft -f -` input.
 */
export function renderNftLock(rules: LockRules): string {
  return `create table inet ${rules.name}\n${renderNftTable(rules)}`;
}

/**
 * The repair of a table that exists but is not exactly the lock: replace it
 * in one transaction (`add` makes the `delete` safe when it vanished).
 *
 * @example
 * ```ts
 * import { renderNftRelock } from "./ruleset.ts";
 *
 * console.assert(renderNftRelock({ name: "X", mark: 1 }).startsWith(
 *   "add table inet X\ndelete table inet X\ntable inet X {\n",
 * ));
 * ```
 *
 * @param rules The table name and the mark.
 * @returns The `nft -f -` input.
 */
export function renderNftRelock(rules: LockRules): string {
  return `add table inet ${rules.name}\ndelete table inet ${rules.name}\n${renderNftTable(rules)}`;
}

/**
 * The unlock: delete the table (fails when it does not exist).
 *
 * @example
 * ```ts
 * import { renderNftUnlock } from "./ruleset.ts";
 * console.assert(renderNftUnlock({ name: "NETLOCK", mark: 0 }) === "delete table inet NETLOCK\n");
 * ```
 *
 * @param rules The table name.
 * @returns The `nft -f -` input.
 */
export function renderNftUnlock(rules: LockRules): string {
  return `delete table inet ${rules.name}\n`;
}
