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

/**
 * What a rule is, as far as locks go: a plain jump (iptables' `-j NAME`),
 * `meta mark MARK accept`, a bare drop, a drop of unmarked packets (an
 * nftables connection lock's rule), a drop of what plain matches select
 * (an iptables connection lock's drop of one connection), `meta mark MARK
 * return` (the first rule of an iptables connection lock), an unreachable
 * marker (`-m comment ... -j RETURN`, which says an iptables lock leaves
 * IPv6 open by choice), a bare accept or return (what a restore inserts
 * ahead of a process lock's drops to open it at once: lib/criu/plan.ts),
 * or anything else.
 */
export type RuleKind =
  | "jump"
  | "markAccept"
  | "drop"
  | "unmarkedDrop"
  | "matchedDrop"
  | "markedReturn"
  | "marker"
  | "accept"
  | "return"
  | "other";

/** One rule, reduced to what the unlock needs. */
export interface NftRule {
  /** The chain holding it. */
  chain: string;
  /** Its handle within the table. */
  handle: number;
  /** What it is (see {@linkcode RuleKind}). */
  kind: RuleKind;
  /** The chain it jumps or goes to, when it does (plain or not). */
  jumpsTo?: string;
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
  /**
   * The sets' elements by set name; concatenations joined with spaces. With
   * `allTables`, keyed `FAMILY TABLE NAME`.
   */
  sets: Record<string, string[]>;
  /** With `allTables`: every table listed. */
  tables?: NftTableName[];
  /** With `allTables`: objects other than chains and rules, by `FAMILY TABLE`. */
  objectsByTable?: Record<string, number>;
  /**
   * Which chains' rules this view holds: `all`, or `FAMILY TABLE CHAIN` keys
   * (a partial read lists only some chains).
   */
  rulesOf?: "all" | Set<string>;
}

/**
 * Parses `nft -j list table FAMILY filter` output.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseNftTableJson } from "./view_parser.ts";
 *
 * const view = parseNftTableJson(JSON.stringify({ nftables: [
 *   { table: { family: "ip", name: "filter", handle: 5 } },
 *   { chain: { family: "ip", table: "filter", name: "NETLOCK", handle: 1 } },
 *   { rule: { family: "ip", table: "filter", chain: "INPUT", handle: 3,
 *     expr: [{ counter: { packets: 0, bytes: 0 } }, { jump: { target: "NETLOCK" } }] } },
 * ] }));
 * assert(view.rules[0].plainJumpTo === "NETLOCK");
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
      const target = jumpTarget(rule.expr);
      view.rules.push({
        chain: String(rule.chain),
        handle: Number(rule.handle),
        kind: ruleKind(rule.expr, jumpTo, mark),
        ...(target === undefined ? {} : { jumpsTo: target }),
        ...(jumpTo === undefined ? {} : { plainJumpTo: jumpTo }),
        ...(mark === undefined ? {} : { markAccept: mark }),
        ...(options.allTables ? { family: String(rule.family), table: String(rule.table) } : {}),
      });
    } else {
      view.otherObjects++;
      const object = Object.values(item)[0] as {
        family?: unknown;
        table?: unknown;
        name?: unknown;
      };
      const where = `${object.family} ${object.table}`;
      if (options.allTables) {
        view.objectsByTable ??= {};
        view.objectsByTable[where] = (view.objectsByTable[where] ?? 0) + 1;
      }
      const setName = options.allTables ? `${where} ${item.set?.name}` : String(item.set?.name);
      if (item.set) view.sets[setName] = setElements(item.set.elem);
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

type Expr = Record<string, unknown>;

function ruleKind(expr: unknown, jumpTo?: string, mark?: number): RuleKind {
  if (jumpTo !== undefined) return "jump";
  if (mark !== undefined) return "markAccept";
  const rest = (withoutCounters(expr) ?? []) as Expr[];
  const last = rest.at(-1);
  if (!last) return "other";
  const init = rest.slice(0, -1);
  if ("drop" in last && init.length === 0) return "drop";
  // iptables-nft's `-j NFQUEUE` (an xt target: nft's own queue may be
  // missing): a namespace lock that holds what it would drop.
  if (isQueueTarget(last) && init.length === 0) return "drop";
  if ("accept" in last && init.length === 0) return "accept";
  // A connection lock's drop; in a lock that holds, a queue in its place.
  const drops = "drop" in last || isQueueTarget(last);
  if (drops && init.some(isUnmarkedMatch)) return "unmarkedDrop";
  if (drops && init.length > 0 && init.every(isEqualMatch)) return "matchedDrop";
  if ("return" in last && init.length === 1 && isMarkMatch(init[0])) return "markedReturn";
  if ("return" in last && init.length > 0 && init.every(isCommentMatch)) return "marker";
  // A bare return: what opens an iptables connection lock for a restore.
  if ("return" in last && init.length === 0) return "return";
  return "other";
}

function isQueueTarget(e: Expr): boolean {
  const xt = e.xt as { type?: unknown; name?: unknown } | undefined;
  return (xt?.type === "target" && xt.name === "NFQUEUE") || "queue" in e;
}

function isUnmarkedMatch(e: Expr): boolean {
  const match = e.match as { op?: unknown; left?: { meta?: { key?: unknown } } } | undefined;
  return match?.op === "!=" && match.left?.meta?.key === "mark";
}

/** A `==` match of anything but the mark (an address, a port, the protocol). */
function isEqualMatch(e: Expr): boolean {
  const match = e.match as { op?: unknown; left?: { meta?: { key?: unknown } } } | undefined;
  return match?.op === "==" && match.left?.meta?.key !== "mark";
}

function isMarkMatch(e: Expr): boolean {
  const match = e.match as { op?: unknown; left?: { meta?: { key?: unknown } } } | undefined;
  return match?.op === "==" && match.left?.meta?.key === "mark";
}

function isCommentMatch(e: Expr): boolean {
  const xt = e.xt as { type?: unknown; name?: unknown } | undefined;
  return xt?.type === "match" && xt.name === "comment";
}

function jumpTarget(expr: unknown): string | undefined {
  for (const e of (withoutCounters(expr) ?? []) as Expr[]) {
    const verdict = (e.jump ?? e.goto) as { target?: unknown } | undefined;
    if (typeof verdict?.target === "string") return verdict.target;
  }
  return undefined;
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
 * import assert from "node:assert/strict";
 * import { parseNftTablesJson } from "./view_parser.ts";
 *
 * const tables = parseNftTablesJson('{"nftables":[{"metainfo":{}},' +
 *   '{"table":{"family":"inet","name":"CRIU-1f","handle":3}}]}');
 * assert(tables[0].name === "CRIU-1f");
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

/**
 * One table's view out of a view of every table (`parseNftTableJson` with
 * `allTables`): its chains, rules, sets (by their own names) and how many
 * other objects it holds.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { tableView } from "./view_parser.ts";
 *
 * const view = tableView({
 *   family: "", otherObjects: 1, sets: { "inet T conn4": [] }, objectsByTable: { "inet T": 1 },
 *   chains: [{ name: "input", handle: 1, family: "inet", table: "T" }], rules: [],
 * }, "inet", "T");
 * assert.deepEqual(Object.keys(view.sets), ["conn4"]);
 * assert.equal(view.otherObjects, 1);
 * ```
 *
 * @param state The view of every table.
 * @param family The table's family.
 * @param name The table's name.
 * @returns The table's own view.
 */
export function tableView(state: NftTableView, family: string, name: string): NftTableView {
  const inTable = (item: { family?: string; table?: string }) =>
    item.family === family && item.table === name;
  const prefix = `${family} ${name} `;
  return {
    family,
    chains: state.chains.filter(inTable),
    rules: state.rules.filter(inTable),
    otherObjects: state.objectsByTable?.[`${family} ${name}`] ?? 0,
    sets: Object.fromEntries(
      Object.entries(state.sets).filter(([key]) => key.startsWith(prefix))
        .map(([key, elements]) => [key.slice(prefix.length), elements]),
    ),
  };
}
