/**
 * Pure parsers for connection discovery: the kernel's TCP tables
 * (`/proc/net/tcp`, `/proc/net/tcp6`) and a process's socket inodes, both
 * as the spawned tools print them.
 *
 * @module
 */

import type { Family } from "../common/types.ts";

/** One TCP connection to lock, as seen from the target. */
export interface Connection {
  /** `ipv4` (also for IPv4-mapped IPv6 peers) or `ipv6`. */
  family: Family;
  /** The target's own address. */
  local: string;
  /** The target's own port. */
  localPort: number;
  /** The peer's address. */
  remote: string;
  /** The peer's port. */
  remotePort: number;
}

/**
 * A TCP listening socket (what a dump takes besides its connections): a
 * SYN to its address and port is dropped while it is locked, so that a
 * client waits for the restored service instead of being refused. A
 * wildcard address (`0.0.0.0`, `::`) stands for every local address.
 */
export interface Listener {
  /** `ipv4` (also for an IPv4-mapped IPv6 address) or `ipv6`. */
  family: Family;
  /** The address it listens on (`0.0.0.0` or `::`: any). */
  local: string;
  /** The port it listens on. */
  localPort: number;
}

/**
 * Whether an address is a wildcard (`0.0.0.0`, `::`, in any spelling):
 * a listener on it takes every local address.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isWildcardAddress } from "./proc_net_parser.ts";
 *
 * assert.ok(isWildcardAddress("0:0:0:0:0:0:0:0") && !isWildcardAddress("127.0.0.1"));
 * ```
 *
 * @param address The address.
 * @returns `true` for a wildcard.
 */
export function isWildcardAddress(address: string): boolean {
  return /^[0.:]+$/.test(address);
}

/** One row of a kernel TCP table. */
export interface TcpEntry extends Connection {
  /** The socket's inode, as in `socket:[INODE]`. */
  inode: string;
  /** The TCP state, e.g. `01` ESTABLISHED, `0A` LISTEN. */
  state: string;
}

const LISTEN = "0A";

/**
 * Parses `/proc/net/tcp` or `/proc/net/tcp6` (any number of them
 * concatenated; header lines are skipped). IPv4-mapped IPv6 addresses
 * (`::ffff:a.b.c.d`) come out as IPv4. With `inodes`, only those sockets'
 * rows are decoded.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseProcNetTcp } from "./proc_net_parser.ts";
 *
 * const [entry] = parseProcNetTcp(
 *   "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
 *     "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4242 1\n",
 * );
 * assert(entry.local === "127.0.0.1" && entry.localPort === 8080);
 * assert(entry.remotePort === 54321 && entry.inode === "4242");
 * ```
 *
 * @param text The tables' text.
 * @param inodes Only keep the rows of these sockets.
 * @returns One entry per socket row.
 */
export function parseProcNetTcp(text: string, inodes?: ReadonlySet<string>): TcpEntry[] {
  const entries: TcpEntry[] = [];
  // One regular expression per row; rows of other processes (the inode is
  // checked first) are not decoded at all.
  const row =
    /^ *[0-9]+: ([0-9A-Fa-f]+):([0-9A-Fa-f]+) ([0-9A-Fa-f]+):([0-9A-Fa-f]+) ([0-9A-Fa-f]{2}) \S+ \S+ \S+ +[0-9]+ +[0-9]+ ([0-9]+)/gm;
  for (const match of text.matchAll(row)) {
    const [, localHex, localPortHex, remoteHex, remotePortHex, state, inode] = match;
    if (inodes && !inodes.has(inode)) continue;
    const local = decodeAddress(localHex);
    const remote = decodeAddress(remoteHex);
    if (!local || !remote) continue;
    entries.push({
      family: local.v4 && remote.v4 ? "ipv4" : "ipv6",
      local: local.address,
      localPort: parseInt(localPortHex, 16),
      remote: remote.address,
      remotePort: parseInt(remotePortHex, 16),
      state: state.toUpperCase(),
      inode,
    });
  }
  return entries;
}

/**
 * Parses `ss -tanHe --cgroup` (sock_diag): the cgroup v2 each TCP socket
 * belongs to, by inode. A socket's cgroup is the one its creator was in (an
 * accepted socket takes its listener's), which is what nftables' `socket
 * cgroupv2` matches, not the cgroup its process is in now.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseSocketCgroups } from "./proc_net_parser.ts";
 *
 * const cgroups = parseSocketCgroups(
 *   "ESTAB 0 0 127.0.0.1:80 127.0.0.1:5000 ino:7 sk:1 cgroup:/a <-> cgroup:/a\n" +
 *     "TIME-WAIT 0 0 127.0.0.1:81 127.0.0.1:5001 timer:(timewait,55sec,0) ino:0 sk:2\n",
 * );
 * assert.deepEqual([...cgroups], [["7", "/a"]]);
 * ```
 *
 * @param text What ss printed.
 * @returns Each socket's cgroup path, by inode (sockets without one are left out).
 */
export function parseSocketCgroups(text: string): Map<string, string> {
  const cgroups = new Map<string, string>();
  for (const line of text.split("\n")) {
    const inode = / ino:([0-9]+)/.exec(line)?.[1];
    const cgroup = / cgroup:(\S+)/.exec(line)?.[1];
    if (inode && inode !== "0" && cgroup) cgroups.set(inode, cgroup);
  }
  return cgroups;
}

/**
 * Parses the socket links of a process's fds (`socket:[INODE]`, one a line,
 * as `find /proc/PID/fd -lname 'socket:*' -printf '%l\n'` prints them).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseSocketInodes } from "./proc_net_parser.ts";
 * assert(parseSocketInodes("socket:[12]\nsocket:[34]\n").has("34"));
 * ```
 *
 * @param text The links.
 * @returns The socket inodes.
 */
export function parseSocketInodes(text: string): Set<string> {
  const inodes = new Set<string>();
  for (const match of text.matchAll(/^ *socket:\[([0-9]+)\] *$/gm)) inodes.add(match[1]);
  return inodes;
}

/**
 * The connections to lock: the process's TCP sockets with a remote peer, in
 * every state but LISTEN, each once.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { selectConnections } from "./proc_net_parser.ts";
 *
 * const connections = selectConnections([
 *   { family: "ipv4", local: "127.0.0.1", localPort: 80, remote: "0.0.0.0", remotePort: 0, state: "0A", inode: "1" },
 *   { family: "ipv4", local: "127.0.0.1", localPort: 80, remote: "127.0.0.1", remotePort: 5000, state: "01", inode: "2" },
 * ], new Set(["1", "2"]));
 * assert(connections.length === 1 && connections[0].remotePort === 5000);
 * ```
 *
 * @param entries The kernel's TCP table rows.
 * @param inodes The process's socket inodes.
 * @returns The connections, without duplicates.
 */
export function selectConnections(entries: TcpEntry[], inodes: Set<string>): Connection[] {
  const seen = new Set<string>();
  const connections: Connection[] = [];
  for (const entry of entries) {
    if (entry.state === LISTEN || entry.remotePort === 0 || !inodes.has(entry.inode)) continue;
    const { family, local, localPort, remote, remotePort } = entry;
    // A socket is one row of one table; its inode names it (fds may repeat it).
    if (seen.has(entry.inode)) continue;
    seen.add(entry.inode);
    connections.push({ family, local, localPort, remote, remotePort });
  }
  return connections;
}

/**
 * The listeners of a process: its TCP sockets in state LISTEN, each once
 * (what a dump takes besides its connections).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { selectListeners } from "./proc_net_parser.ts";
 *
 * const listeners = selectListeners([
 *   { family: "ipv4", local: "0.0.0.0", localPort: 80, remote: "0.0.0.0", remotePort: 0, state: "0A", inode: "1" },
 *   { family: "ipv4", local: "127.0.0.1", localPort: 80, remote: "127.0.0.1", remotePort: 5000, state: "01", inode: "2" },
 * ], new Set(["1", "2"]));
 * assert.deepEqual(listeners, [{ family: "ipv4", local: "0.0.0.0", localPort: 80 }]);
 * ```
 *
 * @param entries The kernel's TCP table rows.
 * @param inodes The process's socket inodes.
 * @returns The listeners, without duplicates.
 */
export function selectListeners(entries: TcpEntry[], inodes: Set<string>): Listener[] {
  const seen = new Set<string>();
  const listeners: Listener[] = [];
  for (const entry of entries) {
    if (entry.state !== LISTEN || !inodes.has(entry.inode) || seen.has(entry.inode)) continue;
    seen.add(entry.inode);
    listeners.push({ family: entry.family, local: entry.local, localPort: entry.localPort });
  }
  return listeners;
}

/**
 * Formats 16 bytes as an IPv6 address the way `inet_ntop` (and so
 * iptables-save and nft) prints it: lower-case, the longest run of two or
 * more zero groups as `::`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatIpv6 } from "./proc_net_parser.ts";
 * const loopback = new Uint8Array(16);
 * loopback[15] = 1;
 * assert(formatIpv6(loopback) === "::1");
 * ```
 *
 * @param bytes The address in network order.
 * @returns The text form.
 */
export function formatIpv6(bytes: Uint8Array): string {
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i] << 8) | bytes[2 * i + 1]);
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = groups.map((group) => group.toString(16));
  if (bestLength < 2) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

function decodeAddress(hex: string): { address: string; v4: boolean } | undefined {
  // The kernel prints each 32-bit word in host order (little-endian here).
  if (hex.length === 8) return { address: dotted(word(hex, 0)), v4: true };
  if (hex.length !== 32) return undefined;
  const words = [word(hex, 0), word(hex, 1), word(hex, 2), word(hex, 3)];
  if (words[0] === 0 && words[1] === 0 && words[2] === 0xffff0000) {
    return { address: dotted(words[3]), v4: true }; // ::ffff:a.b.c.d
  }
  const bytes = words.flatMap((w) => [w & 0xff, (w >>> 8) & 0xff, (w >>> 16) & 0xff, w >>> 24]);
  return { address: formatIpv6(new Uint8Array(bytes)), v4: false };
}

function word(hex: string, i: number): number {
  return parseInt(hex.slice(i * 8, i * 8 + 8), 16);
}

// Module-level and array-free: 10,000 connections are 20,000 addresses.
function dotted(w: number): string {
  return `${w & 0xff}.${(w >>> 8) & 0xff}.${(w >>> 16) & 0xff}.${w >>> 24}`;
}
