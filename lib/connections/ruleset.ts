/**
 * Pure renderers of connection locks: per TCP connection, unmarked packets
 * are dropped in both directions (CRIU's `nf_lock_connection`), all
 * connections of a process in one chain (iptables) or one set pair
 * (nftables), named after the lock name and the PID.
 *
 * @module
 */

import type { Family } from "../common/types.ts";
import { type Connection, isWildcardAddress, type Listener } from "./proc_net_parser.ts";

/** The kinds of lock made for one process: its connections, or its cgroup's sockets. */
export type ProcessLockKind = "connections" | "cgroup";

const SUFFIX: Record<ProcessLockKind, string> = { connections: "c", cgroup: "g" };

/**
 * The name of a lock made for one process: `NAME-cPID` for its
 * connections (an iptables chain or an nftables table), `NAME-gPID` for its
 * cgroup (an nftables table), with NAME shortened so that it fits
 * iptables' 28 characters with room for the chains of its tree.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { processLockName } from "./ruleset.ts";
 *
 * assert.equal(processLockName("NETLOCK", "connections", 1234), "NETLOCK-c1234");
 * assert.equal(processLockName("NETLOCK", "cgroup", 1234), "NETLOCK-g1234");
 * ```
 *
 * @param name The lock name.
 * @param kind Which lock.
 * @param pid The process.
 * @returns The lock's name.
 */
export function processLockName(name: string, kind: ProcessLockKind, pid: number): string {
  const suffix = `-${SUFFIX[kind]}${pid}`;
  return `${name.slice(0, ROOT_LENGTH - suffix.length)}${suffix}`;
}

/**
 * The longest process lock name: iptables' 28 characters, less room for the
 * `.ID` of the chains of a connection lock's tree.
 */
const ROOT_LENGTH = 22;

/**
 * Which process lock a chain or table name is (see
 * {@linkcode processLockName}), or `undefined` when `candidate` is not one
 * called `name`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { processLockOf } from "./ruleset.ts";
 *
 * assert.deepEqual(processLockOf("NETLOCK-g42", "NETLOCK"), { kind: "cgroup", pid: 42 });
 * assert.equal(processLockOf("OTHER-c1234", "NETLOCK"), undefined);
 * ```
 *
 * @param candidate A chain or table name.
 * @param name The lock name.
 * @returns The kind and the PID, or `undefined`.
 */
export function processLockOf(
  candidate: string,
  name: string,
): { kind: ProcessLockKind; pid: number } | undefined {
  const match = candidate.match(/-([cg])([1-9][0-9]{0,9})$/);
  if (!match) return undefined;
  const kind = match[1] === "c" ? "connections" : "cgroup";
  const pid = Number(match[2]);
  return processLockName(name, kind, pid) === candidate ? { kind, pid } : undefined;
}

/**
 * The name of a process's connection lock, `NAME-cPID`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionLockName } from "./ruleset.ts";
 *
 * assert.equal(connectionLockName("NETLOCK", 1234), "NETLOCK-c1234");
 * ```
 *
 * @param name The lock name.
 * @param pid The process.
 * @returns The connection lock's name.
 */
export function connectionLockName(name: string, pid: number): string {
  return processLockName(name, "connections", pid);
}

/**
 * The nftables cgroup lock: table `inet NAME-gPID` whose input and output
 * chains drop the unmarked packets of every socket of the cgroup v2 `path`
 * (and the cgroups below it), whichever connection or port, TCP or UDP,
 * sockets made after the lock included. nft resolves `path` under
 * `/sys/fs/cgroup`, where cgroup v2 must be mounted when it runs.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftCgroupLock } from "./ruleset.ts";
 *
 * const script = renderNftCgroupLock("NETLOCK-g7", 0xC114, "/app/web", "create");
 * assert.ok(script.includes(
 *   'add rule inet NETLOCK-g7 input meta mark != 0xc114 socket cgroupv2 level 2 "app/web" drop\n',
 * ));
 * ```
 *
 * @param table The table name (`NAME-gPID`).
 * @param mark Packets with this mark pass.
 * @param path The cgroup v2 path (`/app/web`).
 * @param how `create` (fails if the table exists) or `replace`.
 * @returns The `nft -f -` input.
 */
export function renderNftCgroupLock(
  table: string,
  mark: number,
  path: string,
  how: "create" | "replace",
): string {
  const relative = path.replace(/^\/+/, "");
  const level = relative.split("/").filter(Boolean).length;
  const t = `inet ${table}`;
  const head = how === "create"
    ? `create table ${t}\n`
    : `add table ${t}\ndelete table ${t}\nadd table ${t}\n`;
  return head +
    (["input", "output"] as const).map((hook) =>
      `add chain ${t} ${hook} { type filter hook ${hook} priority 0; policy accept; }\n` +
      `add rule ${t} ${hook} meta mark != 0x${mark.toString(16)} socket cgroupv2 level ${level} ` +
      `"${relative}" drop\n`
    ).join("");
}

/**
 * The iptables rules of a flat connection lock for one family, as
 * iptables-save prints them (so that a lock can be compared with what is
 * in place): marked packets return first (one rule for the whole lock),
 * then for each connection, a drop of the incoming direction and one of
 * the outgoing direction. (CRIU's lock checks the mark in every rule; one
 * check ahead of them all leaves each rule an expression fewer, and the
 * kernel takes a rule's time by its expressions: 10,000 connections load
 * in 0.44 s instead of 0.52.)
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionIptablesBody } from "./ruleset.ts";
 *
 * const [marked, incoming, outgoing] = connectionIptablesBody([{
 *   family: "ipv4", local: "10.0.0.1", localPort: 5000, remote: "10.0.0.2", remotePort: 80,
 * }], "ipv4", 0xC114);
 * assert.equal(marked, "-m mark --mark 0xc114 -j RETURN");
 * assert.equal(incoming, "-s 10.0.0.2/32 -d 10.0.0.1/32 -p tcp -m tcp --sport 80 --dport 5000 -j DROP");
 * assert.equal(outgoing, "-s 10.0.0.1/32 -d 10.0.0.2/32 -p tcp -m tcp --sport 5000 --dport 80 -j DROP");
 * ```
 *
 * @param connections The process's connections (other families are skipped).
 * @param family The family of this body.
 * @param mark Packets with this mark pass.
 * @returns The rule specs, without `-A CHAIN`.
 */
export function connectionIptablesBody(
  connections: readonly Connection[],
  family: Family,
  mark: number,
): string[] {
  return [markedReturn(mark), ...connectionDrops(connections, family)];
}

/** The rule that lets marked packets through a connection lock: first in its chain. */
function markedReturn(mark: number): string {
  return `-m mark --mark 0x${mark.toString(16)} -j RETURN`;
}

/** One direction of a connection, as a drop of the lock meets it. */
interface Drop {
  /** `-s REMOTE/32 -d LOCAL/32` (incoming) or the other way round (outgoing). */
  addresses: string;
  sport: number;
  dport: number;
}

/** Each connection's directions: the incoming one, then the outgoing one. */
function dropsOf(connections: readonly Connection[], family: Family): Drop[] {
  const mask = family === "ipv4" ? "32" : "128";
  return connections.filter((c) => c.family === family).flatMap((c) => [
    {
      addresses: `-s ${c.remote}/${mask} -d ${c.local}/${mask}`,
      sport: c.remotePort,
      dport: c.localPort,
    },
    {
      addresses: `-s ${c.local}/${mask} -d ${c.remote}/${mask}`,
      sport: c.localPort,
      dport: c.remotePort,
    },
  ]);
}

/**
 * What a drop does in a lock that drops; a lock that holds gives its
 * queue's rule instead (`-j NFQUEUE --queue-num N`: `dropVerdict`,
 * lib/iptables/ruleset.ts).
 */
const DROP = "-j DROP";

/** A drop by ports alone, in a chain entered by its addresses. */
function portDrop(drop: Drop, verdict = DROP): string {
  return `-p tcp -m tcp --sport ${drop.sport} --dport ${drop.dport} ${verdict}`;
}

/** A drop by addresses and ports. */
function fullDrop(drop: Drop, verdict = DROP): string {
  return `${drop.addresses} ${portDrop(drop, verdict)}`;
}

/**
 * The drops of a family's listeners: a SYN (a new connection's first
 * segment) to the listener's address and port, unmarked (the lock's chain
 * returns marked packets first). A wildcard IPv6 listener (`::`, which may
 * take IPv4 too) is locked in both families: the safe side.
 */
function listenerDrops(
  listeners: readonly Listener[],
  family: Family,
  verdict = DROP,
): string[] {
  const mask = family === "ipv4" ? "32" : "128";
  return listeners.filter((l) =>
    l.family === family || (family === "ipv4" && l.family === "ipv6" && isWildcardAddress(l.local))
  ).map((l) =>
    `${
      isWildcardAddress(l.local) ? "" : `-d ${l.local}/${mask} `
    }-p tcp -m tcp --dport ${l.localPort} ` +
    `--tcp-flags FIN,SYN,RST,ACK SYN ${verdict}`
  );
}

/** Each connection's drops: the incoming direction, then the outgoing one. */
function connectionDrops(
  connections: readonly Connection[],
  family: Family,
  verdict = DROP,
): string[] {
  return dropsOf(connections, family).map((drop) => fullDrop(drop, verdict));
}

/** One chain of an iptables connection lock's tree: its name and rules. */
export interface Subchain {
  /** `ROOT.ID`. */
  name: string;
  /** Its rules, as iptables-save prints them (without `-A CHAIN`). */
  body: string[];
}

/**
 * A chain holds at most this many of the connections' drops; more are
 * split into chains. (iptables-nft makes a chain about as slowly as 20
 * rules, and the kernel checks every chain a lock's commit touches: 8 drops
 * a chain took 8,233 chains and 1.4 s for 10,000 connections; 64, 561
 * chains and 0.45 s, a flat chain 0.44 s.)
 */
const LEAF_RULES = 64;
/** A chain of the tree sends packets on to at most this many chains, by port range. */
const FANOUT = 16;

/**
 * An iptables connection lock whose cost per packet does not grow with the
 * number of connections: the drops of {@linkcode connectionIptablesBody}
 * sorted into a tree of chains, by destination port, then (for the many
 * connections of one port, a server's) by source port, each chain sending
 * a packet on to one of up to 16 chains by port range. A packet meets at
 * most about a hundred rules for 10,000 connections instead of 20,000, and
 * the tree is a few jumps deep (nf_tables follows 16). An incoming
 * packet's destination port is the local one, an outgoing one's the remote
 * one: each drop is filed under the port it will be met with. The root
 * lets marked packets return first; up to 128 drops stay in it.
 *
 * The drops of an address pair that has many of them (loopback, a peer
 * host with many connections; up to 16 such pairs) go to a tree of their
 * own, entered by one match of the addresses, and match ports alone: each
 * drop is 6 expressions instead of 10 in the kernel, which loads rules in
 * time with their expressions (10,000 loopback connections: 0.27 s
 * instead of 0.43).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionIptablesTree } from "./ruleset.ts";
 *
 * const connections = Array.from({ length: 80 }, (_, i) => ({
 *   family: "ipv4" as const, local: "10.0.0.1", localPort: 80, remote: `10.0.1.${i}`, remotePort: 1000,
 * }));
 * const tree = connectionIptablesTree(connections, "ipv4", 0xC114, "NETLOCK-c7");
 * assert.equal(tree.body[0], "-m mark --mark 0xc114 -j RETURN");
 * assert.equal(tree.body[1], "-p tcp -m tcp --dport 80 -j NETLOCK-c7.0");
 * const drops = [tree.body, ...tree.subchains.map((c) => c.body)].flat().filter((r) => r.endsWith("-j DROP"));
 * assert.equal(drops.length, 160);
 *
 * // One address pair, many connections: a chain entered by the addresses.
 * const loopback = Array.from({ length: 80 }, (_, i) => ({
 *   family: "ipv4" as const, local: "127.0.0.1", localPort: 80, remote: "127.0.0.1", remotePort: 1000 + i,
 * }));
 * const paired = connectionIptablesTree(loopback, "ipv4", 0xC114, "NETLOCK-c8");
 * assert.equal(paired.body[1], "-s 127.0.0.1/32 -d 127.0.0.1/32 -j NETLOCK-c8.0");
 * ```
 *
 * @param connections The process tree's connections (other families are skipped).
 * @param family The family of this tree.
 * @param mark Packets with this mark pass.
 * @param root The lock's chain (`NAME-cPID`): the tree's root, jumped to from INPUT and OUTPUT.
 * @param listeners Listeners whose SYNs are dropped too (at the end of the root).
 * @param verdict What each drop does: `-j DROP`, or a queue's rule for a lock that holds.
 * @returns The root's rules and the other chains of the tree.
 */
export function connectionIptablesTree(
  connections: readonly Connection[],
  family: Family,
  mark: number,
  root: string,
  listeners: readonly Listener[] = [],
  verdict = DROP,
): { body: string[]; subchains: Subchain[] } {
  const drops = dropsOf(connections, family);
  const head = markedReturn(mark);
  const synDrops = listenerDrops(listeners, family, verdict);
  const full = (drop: Drop) => fullDrop(drop, verdict);
  const ports = (drop: Drop) => portDrop(drop, verdict);
  if (drops.length <= 2 * LEAF_RULES) {
    return { body: [head, ...drops.map(full), ...synDrops], subchains: [] };
  }
  const subchains: Subchain[] = [];
  // A new chain of the tree (named in the order made, parents first).
  const chain = (rules: () => string[]): string => {
    const made: Subchain = { name: `${root}.${subchains.length.toString(36)}`, body: [] };
    subchains.push(made);
    made.body = rules();
    return made.name;
  };
  // `part` is sorted by `field`: each range of ports is a slice of it (one
  // pass a level, not a filter a range: 10,000 connections in about 15 ms).
  const build = (part: Drop[], field: "dport" | "sport", spec: (d: Drop) => string): string[] => {
    if (part.length <= LEAF_RULES) return part.map(spec);
    const keys = part.map((drop) => drop[field]).filter((key, i, all) => key !== all[i - 1]);
    if (keys.length === 1) {
      return field === "dport" ? build(sortedBy(part, "sport"), "sport", spec) : part.map(spec);
    }
    // Up to FANOUT ranges a chain (the tree stays shallow: nf_tables follows
    // 16 jumps at most), and no more than it takes to fill the leaves (a
    // chain costs the kernel as much as about 20 rules).
    const ranges = Math.min(FANOUT, Math.ceil(part.length / LEAF_RULES));
    const size = Math.ceil(keys.length / ranges);
    const jumps: string[] = [];
    for (let k = 0, start = 0; k < keys.length; k += size) {
      const [lo, hi] = [keys[k], keys[Math.min(k + size, keys.length) - 1]];
      let end = start;
      while (end < part.length && part[end][field] <= hi) end++;
      const range = part.slice(start, end);
      const name = chain(() => build(range, field, spec));
      jumps.push(`-p tcp -m tcp --${field} ${lo === hi ? lo : `${lo}:${hi}`} -j ${name}`);
      start = end;
    }
    return jumps;
  };
  const byPair = new Map<string, Drop[]>();
  for (const drop of drops) {
    const same = byPair.get(drop.addresses);
    if (same) same.push(drop);
    else byPair.set(drop.addresses, [drop]);
  }
  // The largest pairs first, then by their addresses: the same connections
  // make the same tree, whatever order they were found in.
  const pairs = [...byPair].filter(([, same]) => same.length >= LEAF_RULES)
    .sort(([a, x], [b, y]) => y.length - x.length || (a < b ? -1 : a > b ? 1 : 0))
    .slice(0, FANOUT);
  const body = [head];
  for (const [addresses, same] of pairs) {
    const pairChain = chain(() => {
      // Other traffic of the pair (loopback's, a peer's other services)
      // leaves after one match instead of walking the port tree.
      const cover = coveringPorts(same);
      const rest = build(sortedBy(same, "dport"), "dport", ports);
      return cover ? [portReturn(cover), ...rest] : rest;
    });
    body.push(`${addresses} -j ${pairChain}`);
  }
  const paired = new Set(pairs.map(([addresses]) => addresses));
  const rest = drops.filter((drop) => !paired.has(drop.addresses));
  body.push(...build(sortedBy(rest, "dport"), "dport", full), ...synDrops);
  return { body, subchains };
}

/** The most ports one multiport match takes. */
const MULTIPORT_MAX = 15;

/**
 * The first rule of an address pair's chain when few ports cover its drops:
 * TCP packets with none of them as either port return at once.
 */
function portReturn(ports: readonly number[]): string {
  return `-p tcp -m multiport ! --ports ${ports.join(",")} -j RETURN`;
}

/**
 * At most 15 ports such that every drop has one of them as its source or
 * destination port (the server ports of a pair's connections, typically
 * one), chosen greedily; `undefined` when 15 do not cover them all.
 */
function coveringPorts(drops: readonly Drop[]): number[] | undefined {
  let left = drops;
  const chosen: number[] = [];
  const counts = new Uint32Array(65_536);
  while (left.length > 0) {
    if (chosen.length === MULTIPORT_MAX) return undefined;
    counts.fill(0);
    let best = left[0].sport;
    for (const drop of left) {
      for (const port of drop.sport === drop.dport ? [drop.sport] : [drop.sport, drop.dport]) {
        if (++counts[port] > counts[best]) best = port;
      }
    }
    chosen.push(best);
    left = left.filter((drop) => drop.sport !== best && drop.dport !== best);
  }
  return chosen.sort((a, b) => a - b);
}

/**
 * A copy sorted by one port, stable (ties keep their order): a counting
 * sort, as ports are below 65,536 (a comparison sort of 20,000 drops took
 * 10-15 ms of the lock's cold start).
 */
function sortedBy(entries: Drop[], field: "dport" | "sport"): Drop[] {
  const starts = new Uint32Array(65_537);
  for (const entry of entries) starts[entry[field] + 1]++;
  for (let port = 1; port < starts.length; port++) starts[port] += starts[port - 1];
  const sorted = new Array<Drop>(entries.length);
  for (const entry of entries) sorted[starts[entry[field]]++] = entry;
  return sorted;
}

/**
 * The elements of the nftables sets, `REMOTE RPORT LOCAL LPORT` (as
 * {@linkcode parseNftTableJson} reports set elements), per family.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionSetElements } from "./ruleset.ts";
 *
 * const sets = connectionSetElements([{
 *   family: "ipv6", local: "::1", localPort: 5000, remote: "::1", remotePort: 80,
 * }]);
 * assert(sets.conn6[0] === "::1 80 ::1 5000" && sets.conn4.length === 0);
 * ```
 *
 * @param connections The process's connections.
 * @returns The elements of `conn4` and `conn6`.
 */
export function connectionSetElements(
  connections: readonly Connection[],
): { conn4: string[]; conn6: string[] } {
  const key = (c: Connection) => `${c.remote} ${c.remotePort} ${c.local} ${c.localPort}`;
  return {
    conn4: connections.filter((c) => c.family === "ipv4").map(key),
    conn6: connections.filter((c) => c.family === "ipv6").map(key),
  };
}

/**
 * The elements of the nftables listener sets: `LOCAL LPORT` per family
 * (`listen4`, `listen6`), and `LPORT` for wildcard listeners (`listenany`,
 * both families: the safe side for a `::` listener that takes IPv4 too).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { listenerSetElements } from "./ruleset.ts";
 *
 * const sets = listenerSetElements([
 *   { family: "ipv4", local: "10.0.0.1", localPort: 80 },
 *   { family: "ipv6", local: "::", localPort: 443 },
 * ]);
 * assert.deepEqual(sets, { listen4: ["10.0.0.1 80"], listen6: [], listenany: ["443"] });
 * ```
 *
 * @param listeners The listeners.
 * @returns The elements of `listen4`, `listen6` and `listenany`.
 */
export function listenerSetElements(
  listeners: readonly Listener[],
): { listen4: string[]; listen6: string[]; listenany: string[] } {
  const bound = listeners.filter((l) => !isWildcardAddress(l.local));
  const key = (l: Listener) => `${l.local} ${l.localPort}`;
  return {
    listen4: bound.filter((l) => l.family === "ipv4").map(key),
    listen6: bound.filter((l) => l.family === "ipv6").map(key),
    listenany: [
      ...new Set(
        listeners.filter((l) => isWildcardAddress(l.local)).map((l) => String(l.localPort)),
      ),
    ],
  };
}

/**
 * The nftables connection lock: table `inet NAME-cPID` with two sets of
 * `addr . port . addr . port` (remote first) and input/output chains that
 * drop unmarked packets of those connections, and three sets of listeners
 * (`listen4`, `listen6`: `addr . port`; `listenany`: a wildcard's port)
 * whose unmarked SYNs the input chain drops; elements are added in the
 * same transaction. `replace` swaps out an existing table atomically.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftConnectionLock } from "./ruleset.ts";
 *
 * const script = renderNftConnectionLock("NETLOCK-c7", 0xC114, [{
 *   family: "ipv4", local: "10.0.0.1", localPort: 5000, remote: "10.0.0.2", remotePort: 80,
 * }], "create");
 * assert(script.startsWith("create table inet NETLOCK-c7\n"));
 * assert(script.endsWith("add element inet NETLOCK-c7 conn4 { 10.0.0.2 . 80 . 10.0.0.1 . 5000 }\n"));
 * ```
 *
 * @param table The table name (`NAME-cPID`).
 * @param mark Packets with this mark pass.
 * @param connections The connections to lock.
 * @param how `create` (fails if the table exists) or `replace`.
 * @param listeners The listeners to lock.
 * @returns The `nft -f -` input.
 */
export function renderNftConnectionLock(
  table: string,
  mark: number,
  connections: readonly Connection[],
  how: "create" | "replace",
  listeners: readonly Listener[] = [],
): string {
  const head = how === "create"
    ? `create table inet ${table}\n`
    : `add table inet ${table}\ndelete table inet ${table}\n`;
  const m = `meta mark != 0x${mark.toString(16)}`;
  const syn = "tcp flags & (fin | syn | rst | ack) == syn";
  const definition = `table inet ${table} {\n` +
    "\tset conn4 {\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service\n\t}\n" +
    "\tset conn6 {\n\t\ttype ipv6_addr . inet_service . ipv6_addr . inet_service\n\t}\n" +
    "\tset listen4 {\n\t\ttype ipv4_addr . inet_service\n\t}\n" +
    "\tset listen6 {\n\t\ttype ipv6_addr . inet_service\n\t}\n" +
    "\tset listenany {\n\t\ttype inet_service\n\t}\n" +
    "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n" +
    `\t\t${m} ip saddr . tcp sport . ip daddr . tcp dport @conn4 drop\n` +
    `\t\t${m} ip6 saddr . tcp sport . ip6 daddr . tcp dport @conn6 drop\n` +
    // A SYN only: the cheap match first, so other traffic pays one compare.
    `\t\t${syn} ${m} ip daddr . tcp dport @listen4 drop\n` +
    `\t\t${syn} ${m} ip6 daddr . tcp dport @listen6 drop\n` +
    `\t\t${syn} ${m} tcp dport @listenany drop\n\t}\n` +
    "\tchain output {\n\t\ttype filter hook output priority 0; policy accept;\n" +
    `\t\t${m} ip daddr . tcp dport . ip saddr . tcp sport @conn4 drop\n` +
    `\t\t${m} ip6 daddr . tcp dport . ip6 saddr . tcp sport @conn6 drop\n\t}\n}\n`;
  return head + definition + renderNftConnectionAdd(table, connections, listeners);
}

/**
 * Connections added to the sets of a connection lock that exists: `add
 * element` lines for both sets, one transaction as `nft -f -` input. (Adding
 * an element that is there already is no error; the transaction fails whole
 * when the table or a set is missing.)
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderNftConnectionAdd } from "./ruleset.ts";
 *
 * const script = renderNftConnectionAdd("NETLOCK-c7", [{
 *   family: "ipv4", local: "10.0.0.1", localPort: 5000, remote: "10.0.0.2", remotePort: 80,
 * }]);
 * assert.equal(script, "add element inet NETLOCK-c7 conn4 { 10.0.0.2 . 80 . 10.0.0.1 . 5000 }\n");
 * ```
 *
 * @param table The table name (`NAME-cPID`).
 * @param connections The connections to add.
 * @param listeners The listeners to add.
 * @returns The `nft -f -` input (empty for no connections).
 */
export function renderNftConnectionAdd(
  table: string,
  connections: readonly Connection[],
  listeners: readonly Listener[] = [],
): string {
  const sets = { ...connectionSetElements(connections), ...listenerSetElements(listeners) };
  let elements = "";
  for (const set of ["conn4", "conn6", "listen4", "listen6", "listenany"] as const) {
    const keys = sets[set];
    // Chunks keep each command line of a 10,000-connection batch reasonable.
    for (let i = 0; i < keys.length; i += 1000) {
      const chunk = keys.slice(i, i + 1000).map((k) => k.replace(/ /g, " . ")).join(", ");
      elements += `add element inet ${table} ${set} { ${chunk} }\n`;
    }
  }
  return elements;
}

/**
 * Connections added to an iptables connection lock that exists: their
 * drops appended to its chain (after its tree: a packet the tree let
 * through meets them), one `iptables-restore --noflush` input for one
 * family. (The transaction fails whole when the chain is missing.)
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderIptablesConnectionAdd } from "./ruleset.ts";
 *
 * const script = renderIptablesConnectionAdd("NETLOCK-c7", [{
 *   family: "ipv4", local: "10.0.0.1", localPort: 5000, remote: "10.0.0.2", remotePort: 80,
 * }], "ipv4");
 * assert.equal(
 *   script,
 *   "*filter\n" +
 *     "-A NETLOCK-c7 -s 10.0.0.2/32 -d 10.0.0.1/32 -p tcp -m tcp --sport 80 --dport 5000 -j DROP\n" +
 *     "-A NETLOCK-c7 -s 10.0.0.1/32 -d 10.0.0.2/32 -p tcp -m tcp --sport 5000 --dport 80 -j DROP\n" +
 *     "COMMIT\n",
 * );
 * ```
 *
 * @param chain The lock's chain (`NAME-cPID`).
 * @param connections The connections to add (other families are skipped).
 * @param family The family of this input.
 * @param listeners The listeners to add (their SYNs dropped).
 * @param verdict What each drop does: `-j DROP`, or the queue's rule of a lock that holds.
 * @returns The `iptables-restore --noflush` input.
 */
export function renderIptablesConnectionAdd(
  chain: string,
  connections: readonly Connection[],
  family: Family,
  listeners: readonly Listener[] = [],
  verdict = DROP,
): string {
  const rules = [
    ...connectionDrops(connections, family, verdict),
    ...listenerDrops(listeners, family, verdict),
  ]
    .map((spec) => `-A ${chain} ${spec}\n`);
  return `*filter\n${rules.join("")}COMMIT\n`;
}

/**
 * The template of a connection lock, for `netlock rules lock --mode
 * connections`: the script with `REMOTE`, `RPORT`, `LOCAL`, `LPORT` and
 * `PID` in place of one connection's values.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderConnectionTemplate } from "./ruleset.ts";
 *
 * assert(renderConnectionTemplate("iptables", "NETLOCK", 0xC114).includes(
 *   "-A NETLOCK-cPID -s REMOTE -d LOCAL -p tcp -m tcp --sport RPORT --dport LPORT",
 * ));
 * ```
 *
 * @param backend `iptables` (one iptables-restore script per family) or `nftables`.
 * @param name The lock name.
 * @param mark Packets with this mark pass.
 * @returns The script with placeholders.
 */
export function renderConnectionTemplate(
  backend: "iptables" | "nftables",
  name: string,
  mark: number,
): string {
  const sample: Connection = {
    family: "ipv4",
    local: "192.0.2.1",
    localPort: 65001,
    remote: "192.0.2.2",
    remotePort: 65002,
  };
  const table = `${name.slice(0, 24)}-cPID`;
  const text = backend === "nftables"
    ? renderNftConnectionLock(table, mark, [sample], "create")
    : ["*filter", `-N ${table}`, `-I INPUT -j ${table}`, `-I OUTPUT -j ${table}`]
      .concat(connectionIptablesBody([sample], "ipv4", mark).map((spec) => `-A ${table} ${spec}`))
      .concat(["COMMIT", ""]).join("\n");
  return text.replaceAll("192.0.2.1/32", "LOCAL").replaceAll("192.0.2.2/32", "REMOTE")
    .replaceAll("192.0.2.1", "LOCAL").replaceAll("192.0.2.2", "REMOTE")
    .replaceAll("65001", "LPORT").replaceAll("65002", "RPORT");
}
