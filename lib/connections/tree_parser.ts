/**
 * A pure parser of what the process-tree probe prints (see
 * lib/connections/discover.ts): the tree's PIDs, its root's start time and
 * cgroup, netlock's own cgroup, the cgroup v2 mount point, the processes of
 * the root's cgroup, and the links of the tree's file descriptors.
 *
 * @module
 */

/** A process tree as CRIU dumps it: the root and all its descendants. */
export interface ProcessTree {
  /** The root's PID. */
  root: number;
  /** Every PID of the tree, the root first. */
  pids: number[];
  /** The root's start time (clock ticks since boot): tells it from a later process of the same PID. */
  start: string;
  /** The root's state (`S`, `R`, `T`, ...; `Z` for a zombie, which is gone but for its PID). */
  state?: string;
  /** Whether the root is in netlock's own network namespace (`undefined`: not reported). */
  ownNetns?: boolean;
  /** The root's cgroup v2 path (`/` for the root cgroup). */
  cgroup: string;
  /** netlock's own cgroup v2 path. */
  ownCgroup: string;
  /** Where cgroup v2 is mounted (`/sys/fs/cgroup` on most systems); `undefined` when it is not. */
  cgroupMount?: string;
  /** The processes of the root's cgroup and the cgroups below it, when asked for. */
  members?: number[];
}

/**
 * Parses the probe's report.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseTreeReport } from "./tree_parser.ts";
 *
 * const { tree, links } = parseTreeReport(
 *   "tree 42 43 44\nstart 123456\nnetns other\ncgroup /app\nown /\n" +
 *     "mount /sys/fs/cgroup/unified\nmembers 42 43 44\nfds\nsocket:[7]\n/dev/null\n",
 * );
 * assert.deepEqual(tree.pids, [42, 43, 44]);
 * assert.equal(tree.ownNetns, false);
 * assert.equal(tree.cgroup, "/app");
 * assert.deepEqual(tree.members, [42, 43, 44]);
 * assert.equal(links, "socket:[7]\n/dev/null\n");
 * ```
 *
 * @param text What the probe printed.
 * @returns The tree, and the fd links (one a line) printed after `fds`.
 */
export function parseTreeReport(text: string): { tree: ProcessTree; links: string } {
  const at = text.indexOf("\nfds\n");
  const head = at === -1 ? text : text.slice(0, at);
  const links = at === -1 ? "" : text.slice(at + 5);
  const fields = new Map<string, string>();
  for (const line of head.split("\n")) {
    const space = line.indexOf(" ");
    if (space > 0) fields.set(line.slice(0, space), line.slice(space + 1).trim());
  }
  const numbers = (value: string | undefined) =>
    (value ?? "").split(/\s+/).filter(Boolean).map(Number).filter(Number.isSafeInteger);
  const pids = [...new Set(numbers(fields.get("tree")))];
  const members = fields.has("members") ? numbers(fields.get("members")) : undefined;
  const mount = fields.get("mount");
  return {
    tree: {
      root: pids[0],
      pids,
      start: fields.get("start") ?? "",
      ...(fields.has("state") ? { state: fields.get("state") } : {}),
      ...(fields.has("netns") ? { ownNetns: fields.get("netns") === "own" } : {}),
      cgroup: fields.get("cgroup") ?? "",
      ownCgroup: fields.get("own") ?? "",
      ...(mount ? { cgroupMount: mount } : {}),
      ...(members ? { members } : {}),
    },
    links,
  };
}

/**
 * How deep a cgroup v2 path is (`/` is 0, `/a/b` is 2): nft's
 * `socket cgroupv2 level N` takes it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { cgroupLevel } from "./tree_parser.ts";
 *
 * assert.equal(cgroupLevel("/"), 0);
 * assert.equal(cgroupLevel("/system.slice/app.service"), 2);
 * ```
 *
 * @param path The cgroup path.
 * @returns Its depth.
 */
export function cgroupLevel(path: string): number {
  return path.split("/").filter(Boolean).length;
}

/**
 * Whether cgroup `inner` is `outer` or below it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { cgroupWithin } from "./tree_parser.ts";
 *
 * assert.equal(cgroupWithin("/a/b", "/a"), true);
 * assert.equal(cgroupWithin("/ab", "/a"), false);
 * ```
 *
 * @param inner A cgroup path.
 * @param outer Another.
 * @returns `true` when `inner` is in `outer`'s subtree.
 */
export function cgroupWithin(inner: string, outer: string): boolean {
  if (outer === "/") return true;
  return inner === outer || inner.startsWith(`${outer}/`);
}
