/**
 * Reading a namespace's lock state once, for the unlock: every table and
 * chain, the INPUT/OUTPUT rules that jump to a lock, and what the locks
 * hold (so that a table or chain of a lock's name that netlock did not make
 * is told apart), from nf_tables.
 *
 * @module
 */

import { assertToolSuccess, type ToolExec, toolMissing } from "../exec/nsenter.ts";
import { type NftTableView, parseNftTableJson } from "../nftables/view_parser.ts";
import type { RunResult } from "../exec/runner.ts";

/** What to read. */
export interface StateRequest {
  /** Which lock names (chains and tables) are looked for. */
  wanted: (name: string) => boolean;
  /**
   * Locks too big to list cheaply (a connection lock's iptables chain holds
   * two rules per connection): their rules are not read.
   */
  bulky?: (name: string) => boolean;
  /** `nft -t -j list ruleset`, read already: it holds everything. */
  ruleset?: Promise<RunResult>;
}

/**
 * Everything the unlock needs from nf_tables in one round after the list of
 * chains, without listing a connection lock's per-connection rules or set
 * elements (tens of thousands for a connection lock, seconds of nft time):
 * the chains of every table; the rules of the INPUT/OUTPUT chains of the
 * filter tables that hold a wanted chain; the rules of each wanted chain
 * that is not bulky; each wanted `inet` table, tersely (sets without their
 * elements). A whole ruleset, when it was already read, holds all of it.
 * `undefined` when nft is not installed.
 *
 * @param exec Runs a tool in the namespace.
 * @param request The names looked for, which of them are bulky, the ruleset if read.
 * @returns The state.
 */
export async function readNftState(
  exec: ToolExec,
  request: StateRequest,
): Promise<NftTableView | undefined> {
  const { wanted, bulky = () => false } = request;
  if (request.ruleset) {
    const whole = await request.ruleset;
    if (toolMissing(whole)) return undefined;
    assertToolSuccess(whole, "nft");
    const state = parseNftTableJson(whole.stdout, { allTables: true });
    state.tables ??= [];
    state.rulesOf = "all";
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
  const filterChains = state.chains.filter((chain) =>
    chain.table === "filter" && (chain.family === "ip" || chain.family === "ip6")
  );
  const hooks = filterChains.filter((chain) =>
    (chain.name === "INPUT" || chain.name === "OUTPUT") &&
    filterChains.some((c) => c.family === chain.family && wanted(c.name))
  );
  const locks = filterChains.filter((chain) => wanted(chain.name) && !bulky(chain.name));
  const inet = state.tables.filter((table) => table.family === "inet" && wanted(table.name));
  const reads = [
    ...[...hooks, ...locks].map((chain) => ({
      key: `${chain.family} filter ${chain.name}`,
      argv: ["-j", "list", "chain", chain.family!, "filter", chain.name],
    })),
    ...inet.map((table) => ({
      key: `inet ${table.name}`,
      argv: ["-t", "-j", "list", "table", "inet", table.name],
    })),
  ];
  const listings = await Promise.all(reads.map(({ argv }) => exec("nft", argv)));
  const rulesOf = new Set<string>();
  for (const [i, result] of listings.entries()) {
    // Deleted meanwhile: the transaction planned from this read fails and is replanned.
    if (!result.success && /No such file or directory/.test(result.stderr)) continue;
    assertToolSuccess(result, "nft");
    const part = parseNftTableJson(result.stdout, { allTables: true });
    state.rules.push(...part.rules);
    rulesOf.add(reads[i].key);
    if (reads[i].key.startsWith("inet ")) {
      Object.assign(state.sets, part.sets);
      state.objectsByTable = { ...state.objectsByTable, ...part.objectsByTable };
      state.otherObjects += part.otherObjects;
    }
  }
  state.rulesOf = rulesOf;
  return state;
}
