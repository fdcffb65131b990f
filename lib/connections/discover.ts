/**
 * Finding a process tree and its TCP connections without reading `/proc`
 * from Deno: one spawned shell walks the tree (`/proc/PID/task/*\/children`,
 * so the children of every thread), reads the root's start time and cgroup,
 * netlock's own cgroup and where cgroup v2 is mounted, and then execs one
 * `find` over the tree's fd directories; `cat /proc/net/tcp /proc/net/tcp6`
 * gives the kernel's TCP tables at the same time. Both run through nsenter
 * in the namespace that holds the connections.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { assertToolSuccess, type ToolExec } from "../exec/nsenter.ts";
import { TREE_SH } from "../exec/shell_programs.ts";
import {
  type Connection,
  type Listener,
  parseProcNetTcp,
  parseSocketCgroups,
  parseSocketInodes,
  selectConnections,
  selectListeners,
} from "./proc_net_parser.ts";
import { parseTreeReport, type ProcessTree } from "./tree_parser.ts";

/** The probe of a process tree: lib/connections/tree.sh (its arguments and output are said there). */
export const TREE_SCRIPT: string = TREE_SH;

/** A tree and, when asked for, its TCP connections. */
export interface TreeProbe {
  /** The tree. */
  tree: ProcessTree;
  /** The tree's TCP connections with a remote peer (when asked for). */
  connections?: Connection[];
  /** The tree's TCP listeners (with its connections). */
  listeners?: Listener[];
  /**
   * The cgroup of every TCP socket of the tree, listeners included, by
   * inode (when asked for; `undefined` for a socket sock_diag gave none).
   */
  socketCgroups?: Map<string, string | undefined>;
}

/**
 * Probes the process tree of `pid`: its PIDs, cgroup, and with
 * `connections` every TCP connection with a remote peer (every state but
 * LISTEN; IPv4-mapped IPv6 peers as IPv4) of every process of the tree;
 * with `socketCgroups` the cgroup of each of its TCP sockets (`ss`, run in
 * the same round).
 *
 * @example
 * ```ts
 * import { probeTree } from "./discover.ts";
 * import { nsenterExec } from "../exec/nsenter.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const { tree, connections } = await probeTree(nsenterExec([], { timeoutMs: 10_000 }), 1234, {
 *     connections: true,
 *   });
 *   console.log(tree.pids, connections?.length);
 * }
 * ```
 *
 * @param exec Runs a tool in the namespace of the connections.
 * @param pid The tree's root.
 * @param want `connections`: read them too; `members`: list the processes of the root's
 *   cgroup; `socketCgroups`: the cgroups of its TCP sockets.
 * @returns The tree, and its connections when asked for.
 */
export async function probeTree(
  exec: ToolExec,
  pid: number,
  want: { connections?: boolean; members?: boolean; socketCgroups?: boolean } = {},
): Promise<TreeProbe> {
  const fds = want.connections || want.socketCgroups;
  const flags = [want.members ? "1" : "0", fds ? "1" : "0"];
  const [report, tables, diag] = await Promise.all([
    exec("sh", ["-c", TREE_SCRIPT, "netlock-tree", String(pid), ...flags]),
    fds ? exec("cat", ["/proc/net/tcp", "/proc/net/tcp6"]) : undefined,
    want.socketCgroups ? exec("ss", ["-tanHe", "--cgroup"]) : undefined,
  ]);
  if (report.code === 3 && /netlock-tree: no such process/.test(report.stderr)) {
    throw new NetlockError("NO_SUCH_TARGET", "no such process");
  }
  // find exits 1 when a process of the tree exited meanwhile: its fds are gone with it.
  if (!report.success && !(report.code === 1 && report.stdout.includes("\nfds\n"))) {
    assertToolSuccess(report, "sh");
  }
  const { tree, links } = parseTreeReport(report.stdout);
  if (!tables) return { tree };
  // Without IPv6, /proc/net/tcp6 is missing: cat still prints the IPv4 table.
  if (!tables.success && !tables.stdout.includes("local_address")) assertToolSuccess(tables, "cat");
  const inodes = parseSocketInodes(links);
  const rows = parseProcNetTcp(tables.stdout, inodes);
  const probe: TreeProbe = { tree };
  if (want.connections) {
    probe.connections = selectConnections(rows, inodes);
    probe.listeners = selectListeners(rows, inodes);
  }
  if (diag) {
    assertToolSuccess(diag, "ss");
    const cgroups = parseSocketCgroups(diag.stdout);
    probe.socketCgroups = new Map(rows.map((row) => [row.inode, cgroups.get(row.inode)]));
  }
  return probe;
}
