/**
 * The unlock of an iptables lock: with iptables-nft, one nft transaction for
 * both families (which also removes what the lock created); with legacy
 * iptables, or without nft, iptables-restore family by family.
 *
 * @module
 */

import {
  type IptablesContext,
  lockFamily,
  unlockFamily,
  withRollbackNote,
} from "../iptables/backend.ts";
import { unlockThroughNft } from "./transaction.ts";
import { readNftState } from "./state.ts";
import type { Family } from "../common/types.ts";

const NFT_FAMILY: Record<Family, "ip" | "ip6"> = { ipv4: "ip", ipv6: "ip6" };

/**
 * Unlocks every family of the context, all or nothing: if one family fails,
 * the families this call unlocked are locked again before the error is
 * thrown. With iptables-nft, the lock is removed through one nft transaction
 * for both families, which also removes the table and base chains the lock
 * created; otherwise (legacy iptables, no nft) through iptables-restore.
 *
 * @param ctx The target's exec, the rules and the families.
 * @returns Whether anything changed.
 */
export async function iptablesUnlock(ctx: IptablesContext): Promise<{ changed: boolean }> {
  const connection = ctx.rules.body !== undefined;
  const state = await readNftState(ctx.exec, {
    wanted: (name) => name === ctx.rules.name,
    bulky: () => connection,
  });
  // Families whose lock chain nf_tables shows (iptables-nft) go through one
  // nft transaction; the others (legacy iptables, no nft) through restore.
  const viaNft = ctx.families.filter((family) =>
    state?.chains.some((chain) =>
      chain.family === NFT_FAMILY[family] && chain.table === "filter" &&
      chain.name === ctx.rules.name
    )
  );
  const viaRestore = ctx.families.filter((family) => !viaNft.includes(family));
  const [nftOutcome, ...restoreOutcomes] = await Promise.allSettled([
    viaNft.length > 0 && state
      ? unlockThroughNft(ctx.exec, state, {
        wanted: (name) => name === ctx.rules.name,
        criu: false,
        families: viaNft,
        tables: false,
        bulky: () => true,
        kindOf: () => connection ? "connections" : "netns",
        dryRun: ctx.dryRun,
        log: ctx.log,
      }).then((removed) => removed !== undefined)
      : Promise.resolve(false),
    ...viaRestore.map((family) => unlockFamily(ctx, family)),
  ]);
  const outcomes = [nftOutcome, ...restoreOutcomes];
  const failure = outcomes.find((outcome) => outcome.status === "rejected");
  const changed = (outcome: PromiseSettledResult<boolean>) =>
    outcome.status === "fulfilled" && outcome.value;
  if (!failure) return { changed: outcomes.some(changed) };
  const unlocked = [
    ...(changed(nftOutcome) ? viaNft : []),
    ...viaRestore.filter((_, i) => changed(restoreOutcomes[i])),
  ];
  const rollback = await Promise.allSettled(unlocked.map((family) => lockFamily(ctx, family)));
  throw withRollbackNote(failure.reason, rollback);
}
