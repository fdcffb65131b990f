/**
 * The restore's plan: how a restore unlocks what a dump locked, written by
 * the dump's helper into CRIU's image directory so that a restore starts no
 * Deno. Two files: `netlock-unlock` (version 1, key=value lines, which
 * criu-hook.sh reads by key: lib/criu/hook/actions.sh) and
 * `netlock-unlock.nft` (the `nft -f -` script it runs). docs/criu.md,
 * "State", says who makes and removes them, and when.
 *
 * @module
 */

import type { KnownLock } from "./armed.ts";
import { renderNftOpen, renderNftReturnFirst } from "../nftables/ruleset.ts";
import { processLockName } from "../connections/ruleset.ts";
import { renderConnectionLockOpen } from "../lock/process.ts";
import type { Family, OperationResult } from "../common/types.ts";

/**
 * The restore's unlock in CRIU's image directory: this file (key=value
 * lines, see {@linkcode renderPlanFile}) says the tree that was dumped, the backend,
 * and `finish=1` when something is left to remove after the restore;
 * `netlock-unlock.nft` holds the script (see
 * {@linkcode renderRestoreUnlock}). Written after the script, removed
 * before it.
 */
export const RESTORE_PLAN = "netlock-unlock";

/**
 * The plan file: version 1, key=value lines (`kind`: the dumped tree, `netns`
 * or `host`, under the key version 1 named it by; `backend`; `pid`: the
 * dumped root, whose PID a restore in a PID namespace of its own changes,
 * `finish`; `hold`: the directory of the dump's helper when it holds what
 * the lock stops for the restore, which `post-resume` asks to let it
 * through), which criu-hook.sh reads by key (a key it does not know is
 * ignored).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderPlanFile } from "./plan.ts";
 *
 * assert.equal(
 *   renderPlanFile({ tree: "host", backend: "nftables", pid: 42, finish: true }),
 *   "version=1\nkind=host\nbackend=nftables\npid=42\nfinish=1\n",
 * );
 * ```
 *
 * @param plan What the restore's unlock is.
 * @returns The file's text.
 */
export function renderPlanFile(
  plan: { tree: "netns" | "host"; backend: string; pid?: number; finish: boolean; hold?: string },
): string {
  return `version=1\nkind=${plan.tree}\nbackend=${plan.backend}\n` +
    (plan.pid !== undefined ? `pid=${plan.pid}\n` : "") + `finish=${plan.finish ? 1 : 0}\n` +
    (plan.hold !== undefined ? `hold=${plan.hold}\n` : "");
}

/**
 * How a restore lets traffic through the lock a dump's images hold: one
 * `nft -f -` script, written next to the images by the dump's helper and run
 * by `criu-hook.sh` at the restore's `network-unlock`, so that a restore
 * starts no Deno. It opens the lock and deletes nothing (a deletion waits
 * for an RCU grace period, 10-22 ms here, inside the restore clock): an
 * `accept` at the head of both chains of the nftables table, or, with
 * iptables (iptables-nft: its rules are nf_tables objects), a `return` at
 * the head of the lock chain in every family, in one transaction. The
 * opened lock is removed after the restore (`finish`, at `post-resume`). On
 * legacy iptables the script fails and the hook falls back to the full
 * unlock.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderRestoreUnlock } from "./plan.ts";
 *
 * const plan = renderRestoreUnlock({ backend: "iptables", families: ["ipv4", "ipv6"], name: "NETLOCK", mark: 0xc114 });
 * assert.equal(plan.script, "insert rule ip filter NETLOCK return\ninsert rule ip6 filter NETLOCK return\n");
 * assert(plan.finish);
 * ```
 *
 * @param lock The lock the dump made.
 * @returns The script, and whether anything is left to remove after it.
 */
export function renderRestoreUnlock(
  lock: { backend: "iptables" | "nftables"; families: Family[]; name: string; mark: number },
): { script: string; finish: boolean } {
  const script = lock.backend === "nftables"
    ? renderNftOpen(lock)
    : renderNftReturnFirst(lock.name, lock.families);
  return { script, finish: true };
}

/**
 * How a restore lets traffic through the locks a dump of a tree that shares
 * CRIU's namespace left (see lib/criu/tree_lock.ts): one `nft -f -` script
 * run by `criu-hook.sh` at `post-restore`, in its own namespace, the last
 * action before CRIU's own unlock. It deletes nothing: it inserts a bare
 * `accept` ahead of the drops of each lock table (the connection lock's
 * with nftables, the cgroup lock's when the tree was locked by cgroup), and
 * `return` at the head of the connection chain in every family with
 * iptables (iptables-nft: its rules are nf_tables objects). An nf_tables
 * transaction that deletes anything waits for an RCU grace period, 11-15 ms
 * here, longer than the whole restore of CRIU's own unlock; an insert costs
 * about 2 ms. What is left, opened, is removed after the restore clock
 * (`finish`, at `post-resume`). A table or chain that is not there fails
 * the script, and the hook falls back to the full unlock.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderTreeRestoreUnlock } from "./plan.ts";
 *
 * const plan = renderTreeRestoreUnlock({ backend: "nftables", families: ["ipv4"], name: "NETLOCK", pid: 42, cgroup: true });
 * assert.equal(plan.script, "insert rule inet NETLOCK-c42 input accept\n" +
 *   "insert rule inet NETLOCK-c42 output accept\n" +
 *   "insert rule inet NETLOCK-g42 input accept\ninsert rule inet NETLOCK-g42 output accept\n");
 * assert.equal(plan.finish, true);
 * ```
 *
 * @param lock The locks the dump left: backend, families, name, the tree's
 *   root, and whether it was locked by its cgroup too.
 * @returns The script, and whether anything is left to remove after it.
 */
export function renderTreeRestoreUnlock(
  lock: {
    backend: "iptables" | "nftables";
    families: Family[];
    name: string;
    pid: number;
    cgroup?: boolean;
  },
): { script: string; finish: true } {
  const cgroup = lock.cgroup
    ? renderNftOpen({ name: processLockName(lock.name, "cgroup", lock.pid), mark: 0 })
    : "";
  return { script: renderConnectionLockOpen(lock, lock.pid) + cgroup, finish: true };
}

/**
 * Writes a restore plan into `images`: the script first, the plan last, so
 * that a restore never finds half of it (and falls back to the helper or
 * `cli.ts` without one). Throws when it cannot (what was written is removed).
 */
async function writePlan(images: string, script: string, plan: string): Promise<void> {
  try {
    await Deno.writeTextFile(`${images}/${RESTORE_PLAN}.nft`, script, { mode: 0o600 });
    await Deno.writeTextFile(`${images}/${RESTORE_PLAN}`, plan, { mode: 0o600 });
  } catch (error) {
    await removeRestorePlan(images);
    throw error;
  }
}

/**
 * Writes the restore's unlock of the namespace lock `lock` into `images`;
 * with `hold`, the helper's directory, whose helper may keep holding what
 * the lock stopped for the restore (a namespace that outlives the dump:
 * lib/criu/helper/dump_session.ts).
 */
export async function writeRestorePlan(
  images: string,
  lock: RestorePlanned,
  hold?: string,
): Promise<void> {
  const { script, finish } = renderRestoreUnlock(lock);
  await writePlan(
    images,
    script,
    renderPlanFile({ tree: "netns", backend: lock.backend, pid: lock.pid, finish, hold }),
  );
}

/**
 * Writes the restore's unlock of a tree that shares CRIU's namespace into
 * `images` (see {@linkcode renderTreeRestoreUnlock}): it opens the lock of
 * the dumped connections (the cgroup lock is gone by then); with `hold`,
 * the helper's directory, whose helper lets what it held through once the
 * restore asks (lib/criu/helper/host_hold.ts).
 */
export async function writeTreePlan(
  images: string,
  lock: OperationResult,
  pid: number,
  hold?: string,
): Promise<void> {
  const { script, finish } = renderTreeRestoreUnlock({ ...lock, pid });
  await writePlan(
    images,
    script,
    renderPlanFile({ tree: "host", backend: lock.backend, pid, finish, hold }),
  );
}

/** What a restore's unlock is planned from: the lock, and the dumped PID. */
export type RestorePlanned = KnownLock & { name: string; mark: number; pid: number };

/** Removes a restore plan (the list first), e.g. one left by an earlier dump. */
export async function removeRestorePlan(images: string): Promise<void> {
  for (const suffix of ["", ".nft"]) {
    await Deno.remove(`${images}/${RESTORE_PLAN}${suffix}`).catch(() => {});
  }
}
