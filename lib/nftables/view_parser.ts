/**
 * A pure parser of `nft -j list table FAMILY NAME`: the nf_tables view of a
 * table (netlock's own `inet` table, or the one iptables-nft maintains), with
 * the object handles iptables-save hides.
 *
 * Handles tell what a lock created: within a table, nf_tables numbers chains
 * and rules from one counter, so a base chain whose handle is above the lock
 * chain's was created by (or after) the lock.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";

/** One chain with its handle; base chains have a hook and a policy. */
export interface NftChain {
  /** The chain's name. */
  name: string;
  /** Its handle within the table. */
  handle: number;
  /** `input`, `output`, ... for base chains. */
  hook?: string;
  /** `accept` or `drop` for base chains. */
  policy?: string;
  /** `filter`, `nat`, ... for base chains. */
  type?: string;
  /** The chain's family (`ip`, `ip6`, `inet`, ...). */
  family?: string;
  /** The chain's table. */
  table?: string;
  /** The priority of base chains. */
  prio?: number;
}

/** One rule, reduced to what the unlock needs. */
export interface NftRule {
  /** The chain holding it. */
  chain: string;
  /** Its handle within the table. */
  handle: number;
  /** The chain it jumps to when it is nothing but a (counted) jump, as iptables' `-j NAME`. */
  plainJumpTo?: string;
  /** The mark when the rule is exactly `meta mark MARK accept` (a counter allowed). */
  markAccept?: number;
  /** With `allTables`: the rule's family. */
  family?: string;
  /** With `allTables`: the rule's table. */
  table?: string;
}

/** The table as nft listed it. */
export interface NftTableView {
  /** `ip` or `ip6`. */
  family: string;
  /** The table's chains. */
  chains: NftChain[];
  /** The table's rules. */
  rules: NftRule[];
  /** How many other objects (sets, maps, flowtables, ...) the table holds. */
  otherObjects: number;
  /** The sets' elements by set name; concatenations joined with spaces. */
  sets: Record<string, string[]>;
  /** With `allTables`: every table listed. */
  tables?: NftTableName[];
}

/**
 * Parses `nft -j list table FAMILY filter` output.
 *
 * @example
 * ```ts
 * import { parseNftTableJson } from "./view_parser.ts";
 *
 * const view = parseNftTableJson(JSON.stringify({ nftables: [
 *   { table: { family: "ip", name: "filter", handle: 5 } },
 *   { chain: { family: "ip", table: "filter", name: "NETLOCK", handle: 1 } },
 *   { rule: { family: "ip", table: "filter", chain: "INPUT", handle: 3,
 *     expr: [{ counter: { packets: 0, bytes: 0 } }, { jump: { target: "NETLOCK" } }] } },
 * ] }));
 * console.assert(view.rules[0].plainJumpTo === "NETLOCK");
 * ```
 *
 * @param text What nft printed.
 * @param options `allTables`: also record each chain's family and table (for
 *   `nft -j list chains`, which lists the chains of every table).
 * @returns The chains and rules with their handles.
 */
function parseJson<T>(text: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    // A broken or foreign nft: its output is a tool failure, not a crash.
    const shown = text.trim().split("\n")[0].slice(0, 80);
    throw new NetlockError(
      "TOOL_FAILED",
      shown === ""
        ? "nft exited with code 0 but printed nothing"
        : `nft printed output that is not its JSON: "${shown}"`,
    );
  }
}

export function parseNftTableJson(
  text: string,
  options: { allTables?: boolean } = {},
): NftTableView {
  const parsed = parseJson<{ nftables?: Record<string, Record<string, unknown>>[] }>(text);
  const view: NftTableView = { family: "", chains: [], rules: [], otherObjects: 0, sets: {} };
  for (const item of parsed.nftables ?? []) {
    if (item.metainfo) continue;
    if (item.table) {
      view.family = String(item.table.family);
      if (options.allTables) {
        (view.tables ??= []).push({ family: view.family, name: String(item.table.name) });
      }
    } else if (item.chain) {
      const chain = item.chain;
      view.chains.push({
        name: String(chain.name),
        handle: Number(chain.handle),
        ...(chain.hook === undefined ? {} : { hook: String(chain.hook) }),
        ...(chain.policy === undefined ? {} : { policy: String(chain.policy) }),
        ...(chain.type === undefined ? {} : { type: String(chain.type) }),
        ...(chain.prio === undefined ? {} : { prio: Number(chain.prio) }),
        ...(options.allTables ? { family: String(chain.family), table: String(chain.table) } : {}),
      });
    } else if (item.rule) {
      const rule = item.rule;
      const jumpTo = plainJumpTarget(rule.expr);
      const mark = markAcceptValue(rule.expr);
      view.rules.push({
        chain: String(rule.chain),
        handle: Number(rule.handle),
        ...(jumpTo === undefined ? {} : { plainJumpTo: jumpTo }),
        ...(mark === undefined ? {} : { markAccept: mark }),
        ...(options.allTables ? { family: String(rule.family), table: String(rule.table) } : {}),
      });
    } else {
      view.otherObjects++;
      if (item.set) view.sets[String(item.set.name)] = setElements(item.set.elem);
    }
  }
  return view;
}

function setElements(elem: unknown): string[] {
  if (!Array.isArray(elem)) return [];
  return elem.map((element) => {
    const concat = (element as { concat?: unknown[] })?.concat;
    return Array.isArray(concat) ? concat.map(String).join(" ") : String(element);
  });
}

function withoutCounters(expr: unknown): unknown[] | undefined {
  if (!Array.isArray(expr)) return undefined;
  return expr.filter((e) => !(e && typeof e === "object" && "counter" in e));
}

function markAcceptValue(expr: unknown): number | undefined {
  const rest = withoutCounters(expr);
  if (rest?.length !== 2 || !(rest[1] && typeof rest[1] === "object" && "accept" in rest[1])) {
    return undefined;
  }
  const match =
    (rest[0] as { match?: { op?: unknown; left?: { meta?: { key?: unknown } }; right?: unknown } })
      .match;
  const isMark = match?.op === "==" && match.left?.meta?.key === "mark" &&
    typeof match.right === "number";
  return isMark ? match.right as number : undefined;
}

function plainJumpTarget(expr: unknown): string | undefined {
  const rest = withoutCounters(expr);
  if (!rest) return undefined;
  const jump = rest.length === 1 ? (rest[0] as { jump?: { target?: unknown } }).jump : undefined;
  return typeof jump?.target === "string" ? jump.target : undefined;
}

/** A table as `nft -j list tables` names it. */
export interface NftTableName {
  /** `ip`, `ip6`, `inet`, ... */
  family: string;
  /** The table's name. */
  name: string;
}

/**
 * Parses `nft -j list tables`.
 *
 * @example
 * ```ts
 * import { parseNftTablesJson } from "./view_parser.ts";
 *
 * const tables = parseNftTablesJson('{"nftables":[{"metainfo":{}},' +
 *   '{"table":{"family":"inet","name":"CRIU-1f","handle":3}}]}');
 * console.assert(tables[0].name === "CRIU-1f");
 * ```
 *
 * @param text What nft printed.
 * @returns The family and name of every table.
 */
export function parseNftTablesJson(text: string): NftTableName[] {
  const parsed = parseJson<{
    nftables?: { table?: { family?: unknown; name?: unknown } }[];
  }>(text);
  return (parsed.nftables ?? []).flatMap((item) =>
    item.table ? [{ family: String(item.table.family), name: String(item.table.name) }] : []
  );
}
