/**
 * The nftables backend: a lock is one table, made by one `nft -f -`
 * transaction in the target's namespace (both families at once, all or
 * nothing), read back through `nft -j`. (The unlock of every backend is one
 * transaction too: see lib/unlock/.)
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import type { LockRules } from "../common/types.ts";
import { assertToolSuccess, type ToolExec, toolMissing } from "../exec/nsenter.ts";
import { type NftTableView, parseNftTableJson } from "./view_parser.ts";
import type { NftLockState } from "./lock_state.ts";
import type { RunResult } from "../exec/runner.ts";

/** Everything the backend needs for one target. */
export interface NftContext {
  /** Runs a tool in the target's namespace. */
  exec: ToolExec;
  /** The table name and the mark. */
  rules: LockRules;
  /** Log the steps instead of applying them. */
  dryRun: boolean;
  /** Where dry-run steps are reported. */
  log?: (line: string) => void;
}

const MAX_ATTEMPTS = 12;

/** A table-shaped lock: its scripts, and how to tell whether a table is exactly it. */
export interface NftTableLock {
  /** Creates the table; fails as a whole when it exists. */
  create(): string;
  /** Replaces whatever table of that name exists, atomically. */
  replace(): string;
  /** Tens of thousands of elements: too many for nft to list back cheaply. */
  bulky?: boolean;
  /** The state of the table as read (`null`: it does not exist). */
  inspect(view: NftTableView | null): NftLockState;
}

/**
 * Applies a table-shaped lock: optimistic create, then read and replace if
 * the table is not exactly the lock; retried against concurrent changes.
 *
 * @param ctx The target's exec and the table name (`ctx.rules.name`).
 * @param lock The lock's scripts and inspection.
 * @returns Whether anything changed.
 */
export async function lockNftTable(
  ctx: NftContext,
  lock: NftTableLock,
): Promise<{ changed: boolean; table?: number }> {
  if (ctx.dryRun) {
    const state = lock.inspect(await readNftLockTable(ctx));
    if (state === "foreign") throw foreignTableError(ctx.rules.name);
    if (state === "locked") return { changed: false };
    logDryRun(ctx, state === "unlocked" ? lock.create() : lock.replace());
    return { changed: true };
  }
  let script = lock.create();
  let previous: string | undefined;
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const result = await applyNft(ctx, script, !lock.bulky);
    if (result.success && !result.stdinClosedEarly) {
      const table = await verifyTable(ctx, result, !lock.bulky);
      return table === undefined ? { changed: true } : { changed: true, table };
    }
    failUnlessTransient(result);
    const view = await readNftLockTable(ctx);
    const state = lock.inspect(view);
    if (state === "foreign") throw foreignTableError(ctx.rules.name);
    if (state === "locked") return { changed: false };
    const fingerprint = JSON.stringify(view);
    // Our own failure, not a concurrent change: report the tool's error.
    if (fingerprint === previous || (state === "unlocked" && !/File exists/.test(result.stderr))) {
      assertToolSuccess(result, "nft");
    }
    previous = fingerprint;
    script = state === "unlocked" ? lock.create() : lock.replace();
  }
  throw new NetlockError(
    "CONFLICT",
    `the nftables table kept changing; gave up after ${MAX_ATTEMPTS} attempts`,
  );
}

/**
 * The error for a table of the lock's name that netlock did not make.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { foreignTableError } from "./backend.ts";
 *
 * assert.equal(foreignTableError("filter").code, "NAME_IN_USE");
 * ```
 *
 * @param name The table's name (family `inet`).
 * @returns The error.
 */
export function foreignTableError(name: string): NetlockError {
  return new NetlockError(
    "NAME_IN_USE",
    `table inet ${name} is not a netlock lock (it holds what netlock never makes); ` +
      "netlock leaves it alone: give the lock another --name",
  );
}

/**
 * Lists the `inet NAME` table through `nft -j`; `null` when it does not exist.
 *
 * @param ctx The target's exec and the table name.
 * @returns The table, or `null`.
 */
export async function readNftLockTable(ctx: NftContext): Promise<NftTableView | null> {
  const result = await ctx.exec("nft", ["-j", "list", "table", "inet", ctx.rules.name]);
  if (result.success) return parseNftTableJson(result.stdout);
  if (/No such file or directory/.test(result.stderr) && !toolMissing(result)) return null;
  assertToolSuccess(result, "nft");
  return null;
}

async function applyNft(ctx: NftContext, script: string, echoed: boolean): Promise<RunResult> {
  // nft's echo (`-e`, with handles: `-a`) costs it about 0.3 ms, as much as
  // listing the table at the end of the run: it proves the commit and
  // names the table's handle, which the lock's own unlock deletes by.
  return await ctx.exec("nft", echoed ? ["-e", "-a", "-f", "-"] : ["-f", "-"], script);
}

/**
 * The handle of the table `name` an echoed transaction (`nft -e -a`) made
 * last, if it made one.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { madeTableHandle } from "./backend.ts";
 *
 * assert.equal(madeTableHandle("create table inet NETLOCK # handle 7\n", "NETLOCK"), 7);
 * assert.equal(madeTableHandle("add chain inet NETLOCK input # handle 1\n", "NETLOCK"), undefined);
 * ```
 *
 * @param echoed nft's echo.
 * @param name The table's name (family `inet`).
 * @returns The handle, or `undefined`.
 */
export function madeTableHandle(echoed: string, name: string): number | undefined {
  const made = [...echoed.matchAll(/^(?:add|create) table inet (\S+) # handle ([0-9]+)$/gm)]
    .filter((match) => match[1] === name);
  const last = made.at(-1);
  return last ? Number(last[2]) : undefined;
}

/**
 * A tool that exits 0 without doing its job (a broken or foreign binary)
 * must not pass for a lock: nft, which exits 0 only when the transaction was
 * committed, echoed the table it made; for a bulky lock, whose echo would
 * repeat every element, the table's chains are listed in another run
 * instead. Returns the echoed table's handle (none for a bulky lock).
 */
async function verifyTable(
  ctx: NftContext,
  result: RunResult,
  echoed: boolean,
): Promise<number | undefined> {
  if (echoed) {
    const handle = madeTableHandle(result.stdout, ctx.rules.name);
    if (handle !== undefined) return handle;
  } else {
    const listed = await ctx.exec("nft", ["-j", "list", "chains", "inet"]);
    assertToolSuccess(listed, "nft");
    const chains = parseNftTableJson(listed.stdout, { allTables: true }).chains;
    if (chains.some((chain) => chain.table === ctx.rules.name)) return undefined;
  }
  throw new NetlockError("TOOL_FAILED", "nft exited with code 0 but the lock is not in place");
}

function logDryRun(ctx: NftContext, script: string): void {
  ctx.log?.(`would run: nft -f - <<EOF\n${script}EOF`);
}

function failUnlessTransient(result: RunResult): void {
  // A missing nft, or a kernel without nf_tables, will not change on retry.
  if (
    toolMissing(result) ||
    /not supported|Operation not permitted|Permission denied/.test(result.stderr)
  ) {
    assertToolSuccess(result, "nft");
  }
}
