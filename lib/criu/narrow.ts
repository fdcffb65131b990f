/**
 * The narrowing of a namespace lock to what a dump took, after a restore
 * into a namespace that outlives the tree (a pod's) failed.
 *
 * @module
 */

import type { DumpedSockets } from "./dumped_sockets.ts";
import { toTargetRef } from "../netns/target.ts";
import { prepare, resolveOptions } from "../netns/prepare.ts";
import { connectionShape } from "../shape/connections.ts";
import { lockWithBackend } from "../lock/apply.ts";
import { unlockNetwork } from "../operations.ts";
import type { NetlockOptions } from "../common/types.ts";

/**
 * Narrows the namespace lock a dump left to what the dump took, after a
 * restore that failed: the dumped connections and listeners locked
 * (`NAME-cPID` in that namespace) first, then the namespace lock removed,
 * so that a namespace that outlives the tree (a pod's, held by its
 * sandbox) lets its other processes talk, while the peers of the dumped
 * connections, and clients of its listeners, get no answer (and no reset)
 * until a restore succeeds.
 *
 * @example
 * ```ts
 * import { narrowToDumped } from "./narrow.ts";
 *
 * // Needs root and a locked namespace: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   await narrowToDumped("/run/netns/pod", 4242, { connections: [], listeners: [] }, {});
 * }
 * ```
 *
 * @param netns A path that holds the namespace (the tree is gone).
 * @param pid The dumped tree's root (the lock's name).
 * @param taken What the dump took, as its images hold it.
 * @param options The hook's options.
 */
export async function narrowToDumped(
  netns: string,
  pid: number,
  taken: DumpedSockets,
  options: NetlockOptions,
): Promise<void> {
  if (taken.connections.length + taken.listeners.length > 0) {
    const opts = resolveOptions({ ...options, mode: "netns" }, "lock");
    const prepared = await prepare(toTargetRef({ netns }), opts, "lock");
    const shape = connectionShape(opts.name, opts.mark, pid, taken.connections, taken.listeners);
    await lockWithBackend(prepared, opts, shape);
  }
  await unlockNetwork({ netns }, options);
}
