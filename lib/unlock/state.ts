/**
 * Reading a namespace's lock state once, for the unlock: every table and
 * chain, and the INPUT/OUTPUT rules that jump to a lock, from nf_tables.
 *
 * @module
 */

import { assertToolSuccess, type ToolExec, toolMissing } from "../exec/nsenter.ts";
import { type NftTableView, parseNftTableJson } from "../nftables/view_parser.ts";
import type { RunResult } from "../exec/runner.ts";

/**
 * Everything the unlock needs from nf_tables, without listing a lock's own
 * rules or set elements (tens of thousands for a connection lock, seconds of
 * nft time): the chains of every table, then the rules of the INPUT/OUTPUT
 * chains of the filter tables that hold one of `names`. A namespace lock's
 * whole ruleset, when it was already read (`ruleset`), holds all of it.
 * `undefined` when nft is not installed.
 *
 * @param exec Runs a tool in the namespace.
 * @param wanted Which lock chains to look for.
 * @param ruleset `nft -t -j list ruleset`, read already.
 * @returns The state, with every table, chain and the INPUT/OUTPUT rules.
 */
export async function readNftState(
  exec: ToolExec,
  wanted: (name: string) => boolean,
  ruleset?: Promise<RunResult>,
): Promise<NftTableView | undefined> {
  if (ruleset) {
    const whole = await ruleset;
    if (toolMissing(whole)) return undefined;
    assertToolSuccess(whole, "nft");
    const state = parseNftTableJson(whole.stdout, { allTables: true });
    state.tables ??= [];
    return state;
  }
  const listed = await exec("nft", ["-j", "list", "chains"]);
  if (toolMissing(listed)) return undefined;
  assertToolSuccess(listed, "nft");
  const state = parseNftTableJson(listed.stdout, { allTables: true });
  const tables = new Map(
    state.chains.map((c) => [`${c.family} ${c.table}`, { family: c.family!, name: c.table! }]),
  );
  state.tables = [...tables.values()];
  const hooks = state.chains.filter((chain) =>
    chain.table === "filter" && (chain.name === "INPUT" || chain.name === "OUTPUT") &&
    state.chains.some((c) => c.family === chain.family && c.table === "filter" && wanted(c.name))
  );
  const listings = await Promise.all(
    hooks.map((chain) => exec("nft", ["-j", "list", "chain", chain.family!, "filter", chain.name])),
  );
  for (const result of listings) {
    // A chain deleted meanwhile: the transaction planned from this read fails and is replanned.
    if (!result.success && /No such file or directory/.test(result.stderr)) continue;
    assertToolSuccess(result, "nft");
    state.rules.push(...parseNftTableJson(result.stdout, { allTables: true }).rules);
  }
  return state;
}
