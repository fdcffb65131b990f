/**
 * Locks CRIU itself left behind (`--criu`): CRIU leaks them when a restore
 * fails (CRIU issue #2828). Its iptables lock is the chain `CRIU` with jumps
 * from INPUT and OUTPUT (duplicated when CRIU locked twice); its nftables
 * lock is a table `inet CRIU-<id>` (the id may be truncated).
 *
 * @module
 */

import { assertToolSuccess, type ToolExec, toolMissing } from "../exec/nsenter.ts";
import { parseNftTablesJson } from "../nftables/view_parser.ts";
import { DEFAULT_MARK } from "../common/options.ts";
import type { LockRules } from "../common/types.ts";

/** CRIU's iptables lock: netlock's ruleset under the name `CRIU`. */
export const CRIU_IPTABLES_RULES: LockRules = { name: "CRIU", mark: DEFAULT_MARK };

/**
 * Whether an nftables table is one of CRIU's locks: family `inet`, named
 * `CRIU` or `CRIU-...`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isCriuNftTable } from "./criu_locks.ts";
 *
 * assert(isCriuNftTable({ family: "inet", name: "CRIU-0123456789abcdef0123" }));
 * assert(!isCriuNftTable({ family: "inet", name: "CRIUX" }));
 * ```
 *
 * @param table The table's family and name.
 * @returns `true` for CRIU's lock tables.
 */
export function isCriuNftTable(table: { family: string; name: string }): boolean {
  return table.family === "inet" && /^CRIU(-[A-Za-z0-9_-]*)?$/.test(table.name);
}

/**
 * The nftables tables CRIU's lock left in the target's namespace; empty when
 * nft is not installed.
 *
 * @param exec Runs a tool in the target's namespace.
 * @returns The names of CRIU's `inet` lock tables.
 */
export async function findCriuNftTables(exec: ToolExec): Promise<string[]> {
  const result = await exec("nft", ["-j", "list", "tables"]);
  if (toolMissing(result)) return [];
  assertToolSuccess(result, "nft");
  return parseNftTablesJson(result.stdout).filter(isCriuNftTable).map((table) => table.name);
}
