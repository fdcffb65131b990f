/**
 * Applies a lock with the backend asked for: iptables, nftables, or `auto`
 * (nftables, falling back to iptables where nft is missing or nf_tables
 * cannot be used). A half-applied iptables lock is removed again through
 * the unlock of lib/unlock/.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { iptablesLock } from "../iptables/backend.ts";
import { lockNftTable } from "../nftables/backend.ts";
import type { Prepared, ResolvedOptions } from "../netns/prepare.ts";
import {
  iptablesContext,
  type LockShape,
  missingToolError,
  type NamespaceOutcome,
  nftContext,
} from "../shape/shape.ts";
import { lockRound } from "../iptables/lock_round.ts";
import { iptablesUnlock } from "../unlock/iptables.ts";

/**
 * Locks the namespace with the chosen backend.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @returns Whether anything changed and which backend locked.
 */
export async function lockWithBackend(
  prepared: Prepared,
  opts: ResolvedOptions,
  shape: LockShape,
): Promise<NamespaceOutcome> {
  const context = iptablesContext(prepared, opts, shape);
  // Both families' restores, and the read after them, in one spawn.
  const ipt = opts.dryRun
    ? context
    : { ...context, exec: lockRound(context.exec, opts.exec.timeoutMs) };
  if (opts.backend === "iptables") {
    return { ...(await iptablesLock(ipt, iptablesUnlock)), backend: "iptables" };
  }
  try {
    const nft = nftContext(prepared, opts, shape);
    return { ...(await lockNftTable(nft, shape.nftLock)), backend: "nftables" };
  } catch (error) {
    if (opts.backend === "nftables" || !nftUnusable(error)) throw error;
    opts.exec.log?.(`  nftables unusable (${(error as Error).message}); falling back to iptables`);
    return { ...(await iptablesLock(ipt, iptablesUnlock)), backend: "iptables" };
  }
}

function nftUnusable(error: unknown): boolean {
  return missingToolError(error) ||
    (error instanceof NetlockError && error.code === "TOOL_FAILED" &&
      /not supported|Protocol not supported|Could not receive/i.test(error.message));
}
