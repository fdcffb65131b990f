/**
 * The shape of a cgroup lock: the nftables table `inet NAME-gPID` whose
 * input and output chains drop the unmarked packets of every socket of a
 * cgroup v2 (`socket cgroupv2`). iptables cannot match incoming packets by
 * cgroup (its `-m cgroup` sees no socket on INPUT), so this lock exists in
 * nftables only.
 *
 * @module
 */

import type { ToolExec } from "../exec/nsenter.ts";
import type { LockShape } from "./shape.ts";
import { isNetlockTable } from "../nftables/lock_state.ts";
import { processLockName, renderNftCgroupLock } from "../connections/ruleset.ts";

/** Where nft looks for cgroup v2 paths. */
export const NFT_CGROUP_ROOT = "/sys/fs/cgroup";

/** The cgroup a lock is made for. */
export interface CgroupTarget {
  /** The cgroup v2 path (`/app/web`). */
  path: string;
  /** Where cgroup v2 is mounted on this system. */
  mount: string;
}

/**
 * The cgroup lock of a process. With `cgroup`, the lock to make; without
 * (unlock, status), any cgroup lock of that process counts.
 *
 * @param name The lock name.
 * @param mark Packets with this mark pass.
 * @param pid The process whose cgroup it is.
 * @param cgroup Its cgroup, when locking.
 * @returns The lock's shape (its iptables side is never made: see the module).
 */
export function cgroupShape(
  name: string,
  mark: number,
  pid: number,
  cgroup?: CgroupTarget,
): LockShape {
  const table = processLockName(name, "cgroup", pid);
  const script = (how: "create" | "replace") => {
    if (!cgroup) throw new TypeError("a cgroup lock is made for a cgroup");
    return renderNftCgroupLock(table, mark, cgroup.path, how);
  };
  return {
    name: table,
    // Read as any process lock's chain would be (never made: it stays absent).
    iptablesRules: () => ({ name: table, mark, body: "any" }),
    nftLock: {
      create: () => script("create"),
      replace: () => script("replace"),
      inspect(view) {
        if (view === null) return "unlocked";
        if (!isNetlockTable(view, "cgroup")) return "foreign";
        // Opened by a restore (an accept ahead of the drops): no longer a lock.
        if (view.rules.some((rule) => rule.kind === "accept")) return "partial";
        const whole = ["input", "output"].every((hook) =>
          view.chains.some((chain) => chain.name === hook) &&
          view.rules.filter((rule) => rule.chain === hook).length === 1
        );
        return whole ? "locked" : "partial";
      },
    },
    ...(cgroup && cgroup.mount !== NFT_CGROUP_ROOT
      ? { nftExec: (exec: ToolExec) => withCgroupRoot(exec) }
      : {}),
  };
}

/**
 * Runs nft where it finds cgroup v2 paths: where cgroup v2 is not mounted at
 * `/sys/fs/cgroup` (hybrid systems mount it at `/sys/fs/cgroup/unified`),
 * nft runs in a mount namespace of its own that has it there (`unshare -m`,
 * private: nothing changes for anyone else).
 *
 * @param exec Runs a tool in the target's network namespace.
 * @returns The same, with nft run that way.
 */
export function withCgroupRoot(exec: ToolExec): ToolExec {
  const mounted = `mount -t cgroup2 none ${NFT_CGROUP_ROOT} && exec nft "$@"`;
  return (tool, args, stdin, signal) =>
    tool === "nft"
      ? exec("unshare", ["-m", "sh", "-c", mounted, "nft", ...args], stdin, signal)
      : exec(tool, args, stdin, signal);
}
