/**
 * Pure inspection of a parsed filter table: is netlock's lock there, whole,
 * partly, or not at all, and is there anything else in the table.
 *
 * @module
 */

import type { SavedTable } from "./save_parser.ts";
import type { LockRules } from "../common/types.ts";
import { IPV4_ONLY_MARKER } from "./ruleset.ts";

/** The state of one family's lock, as the planner needs it. */
export interface IptablesLockState {
  /** `locked`: chain with exactly the lock's rules and one jump from each of INPUT and OUTPUT. */
  status: "locked" | "unlocked" | "partial";
  /** Whether the lock chain exists. */
  chainExists: boolean;
  /** Whether the lock chain holds exactly the lock's rules. */
  chainRulesMatch: boolean;
  /** How many rules the lock chain holds. */
  chainRuleCount: number;
  /** The chains of a connection lock's tree (`NAME.ID`) that are there. */
  subchains: string[];
  /** How many drops of single connections the lock's chains hold (two per connection). */
  connectionDrops: number;
  /** The listeners whose SYNs the lock's chain drops: `ADDRESS PORT` (`any PORT` for a wildcard). */
  listeners: string[];
  /** How many `-j NAME` rules INPUT holds. */
  inputJumps: number;
  /** How many `-j NAME` rules OUTPUT holds. */
  outputJumps: number;
  /** Whether the table holds anything besides the lock (rules, chains, non-ACCEPT policies). */
  otherContent: boolean;
  /** The iptables flavour that printed the table. */
  flavour: SavedTable["flavour"];
  /**
   * A chain of the lock's name that is not a netlock lock: it holds rules a
   * lock never holds, a rule other than a plain jump from INPUT or OUTPUT
   * refers to it, or it is empty and nothing jumps to it. Never touched.
   */
  foreign: boolean;
  /** The mark its mark-accept rule lets through, when it has one (namespace locks). */
  mark?: number;
  /** Whether the chain ends with the marker of a lock that leaves IPv6 open by choice. */
  ipv4Only: boolean;
  /**
   * The queue a lock that holds sends what it would drop to: a namespace
   * lock's last rule, or a connection lock's drops (`-j NFQUEUE --queue-num N`).
   */
  queue?: number;
}

const BUILTIN_CHAINS = new Set(["INPUT", "FORWARD", "OUTPUT"]);

/** The state of a table that holds no lock at all (the optimistic assumption). */
export const UNLOCKED_STATE: IptablesLockState = {
  status: "unlocked",
  chainExists: false,
  chainRulesMatch: false,
  chainRuleCount: 0,
  subchains: [],
  connectionDrops: 0,
  listeners: [],
  inputJumps: 0,
  outputJumps: 0,
  otherContent: true,
  flavour: "unknown",
  foreign: false,
  ipv4Only: false,
};

/**
 * Finds netlock's lock in a parsed filter table.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspectIptablesLock } from "./lock_state.ts";
 * import { parseIptablesSave } from "./save_parser.ts";
 *
 * const state = inspectIptablesLock(parseIptablesSave(
 *   "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:NETLOCK - [0:0]\n" +
 *     "-A INPUT -j NETLOCK\n-A OUTPUT -j NETLOCK\n" +
 *     "-A NETLOCK -m mark --mark 0xc114 -j ACCEPT\n-A NETLOCK -j DROP\nCOMMIT\n",
 * ), { name: "NETLOCK", mark: 0xC114 });
 * assert(state.status === "locked" && !state.otherContent);
 * ```
 *
 * @param table The parsed `iptables-save -t filter` output.
 * @param rules The lock's name and mark.
 * @returns What of the lock is present, and whether anything else is.
 */
export function inspectIptablesLock(table: SavedTable, rules: LockRules): IptablesLockState {
  const jump = `-j ${rules.name}`;
  const count = (chain: string) =>
    table.rules.filter((rule) => rule.chain === chain && rule.spec === jump).length;
  const chainExists = table.chains.some((chain) => chain.name === rules.name);
  const lockRules = table.rules.filter((rule) => rule.chain === rules.name).map((r) => r.spec);
  const body = rules.body;
  const mark = markOf(lockRules[0]);
  const subchains = table.chains.map((chain) => chain.name)
    .filter((chain) => chain.startsWith(`${rules.name}.`));
  const inTree = new Set(subchains);
  // By chain, once: a connection lock's tree has thousands of chains.
  const byChain = new Map<string, string[]>();
  for (const rule of table.rules) {
    const specs = byChain.get(rule.chain);
    if (specs) specs.push(rule.spec);
    else byChain.set(rule.chain, [rule.spec]);
  }
  const rulesOf = (chain: string) => byChain.get(chain) ?? [];
  const wantedSubchains = rules.subchains ?? [];
  const subchainsMatch = subchains.length === wantedSubchains.length &&
    wantedSubchains.every((wanted) => {
      const have = rulesOf(wanted.name);
      return have.length === wanted.body.length && have.every((spec, i) => spec === wanted.body[i]);
    });
  const ipv4Only = lockRules.length === 3 && lockRules[2] === IPV4_ONLY_MARKER;
  const chainRulesMatch = body === "any"
    ? true
    : body
    ? lockRules.length === body.length && lockRules.every((spec, i) => spec === body[i]) &&
      subchainsMatch
    : lockRules.length === (ipv4Only ? 3 : 2) && mark !== undefined &&
      (rules.anyMark || mark === rules.mark) && isFinalRule(lockRules[1], rules.queue) &&
      (rules.ipv4Only === undefined || rules.ipv4Only === ipv4Only);
  const inputJumps = count("INPUT");
  const outputJumps = count("OUTPUT");
  // A connection lock that holds queues each of its drops to the one queue.
  const queue = body === undefined
    ? queueOf(lockRules[1])
    : queueOfDrops([rules.name, ...subchains].map(rulesOf));
  // What a lock of this kind may hold, and who may refer to it.
  const mayHold = body === undefined
    ? isNamespaceLockRule
    : (spec: string) =>
      isConnectionLockRule(spec) || isTreeRule(spec, rules.name) || isMarkedReturn(spec) ||
      isListenerDrop(spec) || isPortReturn(spec) ||
      // (`-j RETURN`: the lock opened by a restore, see renderIptablesOpen.)
      spec === "-j RETURN";
  const refersToLock = new RegExp(`(^| )-[jg] ${rules.name}( |$)`);
  const foreign = chainExists && (
    lockRules.some((spec) => !mayHold(spec)) ||
    subchains.some((chain) => rulesOf(chain).some((spec) => !mayHold(spec))) ||
    table.rules.some((rule) =>
      rule.chain !== rules.name && !inTree.has(rule.chain) &&
      refersToLock.test(rule.spec) &&
      !((rule.chain === "INPUT" || rule.chain === "OUTPUT") && rule.spec === jump)
    ) ||
    (lockRules.length === 0 && inputJumps + outputJumps === 0)
  );
  const otherContent = !table.compatible ||
    table.chains.some((chain) =>
      chain.name !== rules.name && !inTree.has(chain.name) &&
      (!BUILTIN_CHAINS.has(chain.name) || chain.policy !== "ACCEPT")
    ) ||
    table.rules.some((rule) =>
      rule.chain !== rules.name && !inTree.has(rule.chain) &&
      !((rule.chain === "INPUT" || rule.chain === "OUTPUT") && rule.spec === jump)
    );
  const status = chainExists && chainRulesMatch && inputJumps === 1 && outputJumps === 1
    ? "locked"
    : !chainExists && inputJumps === 0 && outputJumps === 0
    ? "unlocked"
    : "partial";
  return {
    status,
    chainExists,
    chainRulesMatch,
    chainRuleCount: lockRules.length,
    subchains,
    connectionDrops: [rules.name, ...subchains].reduce(
      (sum, chain) => sum + rulesOf(chain).filter(isConnectionLockRule).length,
      0,
    ),
    listeners: lockRules.flatMap((spec) => {
      const match = spec.match(LISTENER_DROP);
      return match ? [`${match[1]?.replace(/\/(32|128)$/, "") ?? "any"} ${match[2]}`] : [];
    }),
    inputJumps,
    outputJumps,
    otherContent,
    flavour: table.flavour,
    foreign,
    ipv4Only,
    ...(mark === undefined ? {} : { mark }),
    ...(queue === undefined ? {} : { queue }),
  };
}

/**
 * Whether two states are the same as far as the lock is concerned (used to
 * tell a tool's own failure from a concurrent change).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { sameLockState, UNLOCKED_STATE } from "./lock_state.ts";
 * assert(sameLockState(UNLOCKED_STATE, { ...UNLOCKED_STATE, otherContent: false }));
 * ```
 *
 * @param a One state.
 * @param b The other.
 * @returns `true` when the lock's parts are the same in both.
 */
export function sameLockState(a: IptablesLockState, b: IptablesLockState): boolean {
  return a.status === b.status && a.chainExists === b.chainExists &&
    a.chainRulesMatch === b.chainRulesMatch && a.inputJumps === b.inputJumps &&
    a.outputJumps === b.outputJumps;
}

/** The mark of a `-m mark --mark M -j ACCEPT` rule; `undefined` for any other rule. */
function markOf(spec: string | undefined): number | undefined {
  const match = spec?.match(/^-m mark --mark (0x[0-9a-fA-F]+|[0-9]+)(\/0xffffffff)? -j ACCEPT$/);
  return match ? Number(match[1]) : undefined;
}

function isNamespaceLockRule(spec: string): boolean {
  // (`-j RETURN`: the lock opened, see renderIptablesOpen.)
  return markOf(spec) !== undefined || spec === "-j DROP" || spec === IPV4_ONLY_MARKER ||
    spec === "-j RETURN" || queueOf(spec) !== undefined;
}

/** What a lock's drop does, as iptables-save prints it (lib/iptables/ruleset.ts, `dropVerdict`). */
const DROP_VERDICT = "-j (?:DROP|NFQUEUE --queue-num [0-9]+)";

/** The queue of a namespace lock's last rule that holds (`-j NFQUEUE --queue-num N`). */
function queueOf(spec: string | undefined): number | undefined {
  const match = spec?.match(/^-j NFQUEUE --queue-num ([0-9]+)$/);
  return match ? Number(match[1]) : undefined;
}

/** The queue of the first of a connection lock's drops (of a connection or a listener's SYNs) that queues. */
function queueOfDrops(chains: string[][]): number | undefined {
  for (const specs of chains) {
    for (const spec of specs) {
      if (!isConnectionLockRule(spec) && !isListenerDrop(spec)) continue;
      // The drop's verdict is its rule's end: `-j DROP` or a queue.
      const queue = queueOf(spec.slice(spec.lastIndexOf("-j ")));
      if (queue !== undefined) return queue;
    }
  }
  return undefined;
}

/** Whether a namespace lock's last rule is the one wanted: a drop, or a queue (`any`: either). */
function isFinalRule(spec: string | undefined, queue: number | "any" | undefined): boolean {
  if (queue === "any") return spec === "-j DROP" || queueOf(spec) !== undefined;
  return queue === undefined ? spec === "-j DROP" : queueOf(spec) === queue;
}

/**
 * A rule of a connection lock's tree: packets of a port range, or of an
 * address pair, to one of its chains.
 */
function isTreeRule(spec: string, root: string): boolean {
  const match = spec.match(
    /^(?:-p tcp -m tcp --[sd]port [0-9]+(?::[0-9]+)?|-s \S+ -d \S+) -j (\S+)$/,
  );
  return match !== null && match[1].startsWith(`${root}.`);
}

/**
 * A connection lock's rule: a drop of one connection's packets (unmarked
 * ones: the lock's chain returns marked packets first; an earlier netlock
 * checked the mark in each drop, and such a lock is still netlock's), by
 * ports alone in a chain its addresses lead to; in a lock that holds, a
 * queue to its holder instead of the drop.
 */
function isConnectionLockRule(spec: string): boolean {
  return CONNECTION_DROP.test(spec);
}

const CONNECTION_DROP = new RegExp(
  "^(-s \\S+ -d \\S+ )?-p tcp -m tcp --sport [0-9]+ --dport [0-9]+ " +
    `(-m mark ! --mark 0x[0-9a-f]+ )?${DROP_VERDICT}$`,
);

/** A connection lock's drop of a listener's SYNs (to its address, or any, and port). */
const LISTENER_DROP = new RegExp(
  `^(?:-d (\\S+) )?-p tcp -m tcp --dport ([0-9]+) --tcp-flags FIN,SYN,RST,ACK SYN ${DROP_VERDICT}$`,
);

function isListenerDrop(spec: string): boolean {
  return LISTENER_DROP.test(spec);
}

/**
 * The first rule of an address pair's chain in a connection lock's tree:
 * packets with none of the pair's few ports return.
 */
function isPortReturn(spec: string): boolean {
  return /^-p tcp -m multiport ! --ports [0-9]+(,[0-9]+){0,14} -j RETURN$/.test(spec);
}

/** The first rule of a connection lock's chain: marked packets return. */
function isMarkedReturn(spec: string): boolean {
  return /^-m mark --mark 0x[0-9a-f]+ -j RETURN$/.test(spec);
}
