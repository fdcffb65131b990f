/**
 * Finding a process's TCP connections without reading `/proc` from Deno:
 * its socket inodes come from `find /proc/PID/fd -printf '%l\n'`, the kernel's TCP tables
 * from `cat /proc/net/tcp /proc/net/tcp6`, both spawned through nsenter in
 * the namespace that holds the connections.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { assertToolSuccess, type ToolExec } from "../exec/nsenter.ts";
import {
  type Connection,
  parseProcNetTcp,
  parseSocketInodes,
  selectConnections,
} from "./proc_net_parser.ts";

/**
 * The process's TCP connections with a remote peer (every state but
 * LISTEN); IPv4-mapped IPv6 peers come out as IPv4.
 *
 * @example
 * ```ts ignore
 * import { discoverConnections } from "./discover.ts";
 * import { nsenterExec } from "../exec/nsenter.ts";
 *
 * const connections = await discoverConnections(nsenterExec([], { timeoutMs: 10_000 }), 1234);
 * console.log(connections.length);
 * ```
 *
 * @param exec Runs a tool in the namespace of the connections.
 * @param pid The process.
 * @returns Its connections.
 */
export async function discoverConnections(exec: ToolExec, pid: number): Promise<Connection[]> {
  const [links, tables] = await Promise.all([
    // Every fd's link (sockets are picked out here): -lname would match each
    // link a second time, a third of find's time for 10,000 sockets.
    exec("find", [`/proc/${pid}/fd`, "-mindepth", "1", "-printf", "%l\\n"]),
    exec("cat", ["/proc/net/tcp", "/proc/net/tcp6"]),
  ]);
  if (!links.success) {
    if (/No such file or directory/.test(links.stderr) && links.stdout === "") {
      throw new NetlockError("NO_SUCH_TARGET", "no such process");
    }
    assertToolSuccess(links, "find");
  }
  // Without IPv6, /proc/net/tcp6 is missing: cat still prints the IPv4 table.
  if (!tables.success && !tables.stdout.includes("local_address")) assertToolSuccess(tables, "cat");
  const inodes = parseSocketInodes(links.stdout);
  return selectConnections(parseProcNetTcp(tables.stdout, inodes), inodes);
}
