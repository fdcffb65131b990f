/**
 * The unlock a lock's own handle does first when that lock made an nftables
 * table: one echoed transaction that deletes exactly that table, by the
 * handle nft gave it (lib/nftables/ruleset.ts `renderNftUnlockMade`), with
 * no read before it. A deletion waits for an RCU grace period (15-20 ms
 * here); a read ahead of it cost a third as much again (issue 35). When it
 * fails (the table is gone, or another took its name) nothing changed, and
 * the caller unlocks as every unlock does (lib/unlock/backends.ts).
 *
 * @module
 */

import type { ToolExec } from "../exec/nsenter.ts";
import { renderNftUnlockMade } from "../nftables/ruleset.ts";

/**
 * Deletes the table `name` if it is still the one with `handle`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { unlockMadeTable } from "./made_table.ts";
 * import type { ToolExec } from "../exec/nsenter.ts";
 *
 * const echo: ToolExec = (_tool, _args, stdin) =>
 *   Promise.resolve({
 *     argv: [], code: 0, signal: null, success: true, stderr: "", stdinClosedEarly: false,
 *     stdout: String(stdin).includes("handle 7") ? "create table inet NETLOCK\n" : "",
 *   });
 * assert.equal(await unlockMadeTable(echo, "NETLOCK", 7), true);
 * assert.equal(await unlockMadeTable(echo, "NETLOCK", 8), false);
 * ```
 *
 * @param exec Runs a tool in the lock's namespace.
 * @param name The table's name (family `inet`).
 * @param handle The handle nft echoed when the lock made it.
 * @returns Whether it was deleted (`false`: nothing changed).
 */
export async function unlockMadeTable(
  exec: ToolExec,
  name: string,
  handle: number,
): Promise<boolean> {
  const result = await exec("nft", ["-e", "-f", "-"], renderNftUnlockMade(name, handle));
  // Exit 0 and the echo of the probe's `create`: committed (a broken or
  // foreign nft that exits 0 echoes nothing).
  return result.success && !result.stdinClosedEarly &&
    result.stdout.split("\n").includes(`create table inet ${name}`);
}
