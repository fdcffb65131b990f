/**
 * Pure renderers of connection locks: per TCP connection, unmarked packets
 * are dropped in both directions (CRIU's `nf_lock_connection`), all
 * connections of a process in one chain (iptables) or one set pair
 * (nftables), named after the lock name and the PID.
 *
 * @module
 */

import type { Family } from "../common/types.ts";
import type { Connection } from "./proc_net_parser.ts";

/**
 * The chain (iptables) or table (nftables) name of a process's connection
 * lock: `NAME-cPID`, with NAME shortened so that it fits iptables' 28
 * characters.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionLockName } from "./ruleset.ts";
 * assert(connectionLockName("NETLOCK", 1234) === "NETLOCK-c1234");
 * ```
 *
 * @param name The lock name.
 * @param pid The process.
 * @returns The connection lock's name.
 */
export function connectionLockName(name: string, pid: number): string {
  const suffix = `-c${pid}`;
  return `${name.slice(0, 28 - suffix.length)}${suffix}`;
}

/**
 * The PID a connection lock's name was made for (see
 * {@linkcode connectionLockName}), or `undefined` when `candidate` is not
 * a connection lock called `name`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionLockPid } from "./ruleset.ts";
 * assert(connectionLockPid("NETLOCK-c1234", "NETLOCK") === 1234);
 * assert(connectionLockPid("OTHER-c1234", "NETLOCK") === undefined);
 * ```
 *
 * @param candidate A chain or table name.
 * @param name The lock name.
 * @returns The PID, or `undefined`.
 */
export function connectionLockPid(candidate: string, name: string): number | undefined {
  const match = candidate.match(/-c([1-9][0-9]{0,9})$/);
  if (!match) return undefined;
  const pid = Number(match[1]);
  return connectionLockName(name, pid) === candidate ? pid : undefined;
}

/**
 * The iptables rules of a connection lock for one family, as iptables-save
 * prints them (so that a lock can be compared with what is in place): for
 * each connection, the incoming direction then the outgoing one.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionIptablesBody } from "./ruleset.ts";
 *
 * const [incoming, outgoing] = connectionIptablesBody([{
 *   family: "ipv4", local: "10.0.0.1", localPort: 5000, remote: "10.0.0.2", remotePort: 80,
 * }], "ipv4", 0xC114);
 * assert(incoming ===
 *   "-s 10.0.0.2/32 -d 10.0.0.1/32 -p tcp -m tcp --sport 80 --dport 5000 -m mark ! --mark 0xc114 -j DROP");
 * assert(outgoing.startsWith("-s 10.0.0.1/32 -d 10.0.0.2/32 -p tcp -m tcp --sport 5000 --dport 80"));
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
  const mask = family === "ipv4" ? "32" : "128";
  const tail = `-m mark ! --mark 0x${mark.toString(16)} -j DROP`;
  return connections.filter((c) => c.family === family).flatMap((c) => [
    `-s ${c.remote}/${mask} -d ${c.local}/${mask} -p tcp -m tcp --sport ${c.remotePort} --dport ${c.localPort} ${tail}`,
    `-s ${c.local}/${mask} -d ${c.remote}/${mask} -p tcp -m tcp --sport ${c.localPort} --dport ${c.remotePort} ${tail}`,
  ]);
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
 * The nftables connection lock: table `inet NAME-cPID` with two sets of
 * `addr . port . addr . port` (remote first) and input/output chains that
 * drop unmarked packets of those connections; elements are added in the
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
 * @returns The `nft -f -` input.
 */
export function renderNftConnectionLock(
  table: string,
  mark: number,
  connections: readonly Connection[],
  how: "create" | "replace",
): string {
  const m = `meta mark != 0x${mark.toString(16)}`;
  const head = how === "create"
    ? `create table inet ${table}\n`
    : `add table inet ${table}\ndelete table inet ${table}\n`;
  const definition = `table inet ${table} {\n` +
    "\tset conn4 {\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service\n\t}\n" +
    "\tset conn6 {\n\t\ttype ipv6_addr . inet_service . ipv6_addr . inet_service\n\t}\n" +
    "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n" +
    `\t\t${m} ip saddr . tcp sport . ip daddr . tcp dport @conn4 drop\n` +
    `\t\t${m} ip6 saddr . tcp sport . ip6 daddr . tcp dport @conn6 drop\n\t}\n` +
    "\tchain output {\n\t\ttype filter hook output priority 0; policy accept;\n" +
    `\t\t${m} ip daddr . tcp dport . ip saddr . tcp sport @conn4 drop\n` +
    `\t\t${m} ip6 daddr . tcp dport . ip6 saddr . tcp sport @conn6 drop\n\t}\n}\n`;
  const sets = connectionSetElements(connections);
  let elements = "";
  for (const [set, keys] of [["conn4", sets.conn4], ["conn6", sets.conn6]] as const) {
    // Chunks keep each command line of a 10,000-connection batch reasonable.
    for (let i = 0; i < keys.length; i += 1000) {
      const chunk = keys.slice(i, i + 1000).map((k) => k.replace(/ /g, " . ")).join(", ");
      elements += `add element inet ${table} ${set} { ${chunk} }\n`;
    }
  }
  return head + definition + elements;
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
