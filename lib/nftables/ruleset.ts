/**
 * Pure renderers of the `nft -f -` scripts of the nftables namespace lock:
 * one table `inet NAME` whose `input` and `output` base chains drop
 * everything but packets with the mark.
 *
 * @module
 */

import type { Family, LockRules } from "../common/types.ts";

/**
 * The table's chains and rules as flat `add` commands (nft parses them
 * faster than the block form, which matters inside the frozen window).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftChains } from "./ruleset.ts";
 *
 * assert(renderNftChains({ name: "NETLOCK", mark: 0xC114 }).startsWith(
 *   "add chain inet NETLOCK input { type filter hook input priority 0; policy drop; }\n",
 * ));
 * ```
 *
 * @param rules The table name and the mark.
 * @returns The `add chain` and `add rule` lines of both base chains.
 */
export function renderNftChains(rules: LockRules): string {
  const table = `inet ${rules.name}`;
  return (["input", "output"] as const).map((hook) =>
    `add chain ${table} ${hook} { type filter hook ${hook} priority 0; policy drop; }\n` +
    `add rule ${table} ${hook} meta mark 0x${rules.mark.toString(16)} accept\n`
  ).join("");
}

/**
 * The lock: one transaction that creates the table, or fails as a whole
 * when it already exists (so a second lock changes nothing).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftLock } from "./ruleset.ts";
 *
 * assert(renderNftLock({ name: "CRIU", mark: 0xC114 }).startsWith(
 *   "create table inet CRIU\nadd chain inet CRIU input {",
 * ));
 * ```
 *
 * @param rules The table name and the mark.
 * @returns The `nft -f -` input.
 */
export function renderNftLock(rules: LockRules): string {
  return `create table inet ${rules.name}\n${renderNftChains(rules)}`;
}

/**
 * The repair of a table that exists but is not exactly the lock: replace it
 * in one transaction (`add` makes the `delete` safe when it vanished).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftRelock } from "./ruleset.ts";
 *
 * assert(renderNftRelock({ name: "X", mark: 1 }).startsWith(
 *   "add table inet X\ndelete table inet X\nadd table inet X\n",
 * ));
 * ```
 *
 * @param rules The table name and the mark.
 * @returns The `nft -f -` input.
 */
export function renderNftRelock(rules: LockRules): string {
  const table = `inet ${rules.name}`;
  return `add table ${table}\ndelete table ${table}\nadd table ${table}\n${renderNftChains(rules)}`;
}

/**
 * The unlock: delete the table (fails when it does not exist).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftUnlock } from "./ruleset.ts";
 * assert(renderNftUnlock({ name: "NETLOCK", mark: 0 }) === "delete table inet NETLOCK\n");
 * ```
 *
 * @param rules The table name.
 * @returns The `nft -f -` input.
 */
export function renderNftUnlock(rules: LockRules): string {
  return `delete table inet ${rules.name}\n`;
}

/**
 * The unlock of the very table a lock made, without reading the namespace
 * first: it deletes the table by the handle the lock's echo named, and
 * succeeds only when that table was the one called `name` (`flush` fails
 * when no table of the name exists, `create` when one still exists after
 * the handle's went). Anything else fails as a whole and changes nothing:
 * the caller then reads and plans (lib/unlock/). nft echoes the `create`,
 * which proves the commit.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftUnlockMade } from "./ruleset.ts";
 * assert.equal(
 *   renderNftUnlockMade("NETLOCK", 7),
 *   "flush table inet NETLOCK\ndelete table inet handle 7\n" +
 *     "create table inet NETLOCK\ndelete table inet NETLOCK\n",
 * );
 * ```
 *
 * @param name The table's name.
 * @param handle The handle nft gave it when the lock made it.
 * @returns The `nft -e -f -` input.
 */
export function renderNftUnlockMade(name: string, handle: number): string {
  return `flush table inet ${name}\ndelete table inet handle ${handle}\n` +
    `create table inet ${name}\ndelete table inet ${name}\n`;
}

/**
 * The opening of the lock: an `accept` at the head of both chains, so that
 * traffic flows again while the table stays. An nf_tables transaction that
 * deletes a base chain waits for an RCU grace period (16-22 ms here); an
 * insert costs what an empty transaction does. Inside CRIU's window the lock
 * is opened, and deleted after it (fails when the table does not exist).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftOpen } from "./ruleset.ts";
 * assert.equal(
 *   renderNftOpen({ name: "NETLOCK", mark: 0 }),
 *   "insert rule inet NETLOCK input accept\ninsert rule inet NETLOCK output accept\n",
 * );
 * ```
 *
 * @param rules The table name.
 * @returns The `nft -f -` input.
 */
export function renderNftOpen(rules: LockRules): string {
  return ["input", "output"].map((chain) => `insert rule inet ${rules.name} ${chain} accept\n`)
    .join("");
}

/**
 * The opening of an iptables-nft chain, written for nft: a `return` at its
 * head in the `filter` table of each family (iptables-nft's rules are
 * nf_tables objects, so one `nft -f -` opens every family in one
 * transaction, deleting nothing). Fails on legacy iptables, whose rules
 * nft does not see.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftReturnFirst } from "./ruleset.ts";
 * assert.equal(
 *   renderNftReturnFirst("NETLOCK", ["ipv4", "ipv6"]),
 *   "insert rule ip filter NETLOCK return\ninsert rule ip6 filter NETLOCK return\n",
 * );
 * ```
 *
 * @param chain The iptables chain.
 * @param families The families whose chain it is.
 * @returns The `nft -f -` input.
 */
export function renderNftReturnFirst(chain: string, families: readonly Family[]): string {
  return families.map((family) =>
    `insert rule ${family === "ipv4" ? "ip" : "ip6"} filter ${chain} return\n`
  ).join("");
}
