/**
 * Plans the unlock of an iptables-nft lock as one nft transaction over both
 * families, removing exactly what the lock created. Pure: no I/O.
 *
 * @module
 */

import type { NftTableView } from "../nft_view_parser.ts";

/**
 * Whether a family's table holds netlock's lock chain.
 *
 * @example
 * ```ts
 * import { hasLockChain } from "./nft_unlock_planner.ts";
 * console.assert(!hasLockChain(null, "NETLOCK"));
 * ```
 *
 * @param view The table, or `null` when it does not exist.
 * @param name The lock chain's name.
 * @returns `true` when the chain is there.
 */
export function hasLockChain(view: NftTableView | null, name: string): boolean {
  return view?.chains.some((chain) => chain.name === name) ?? false;
}

/**
 * The nft commands that remove the lock from one family's filter table: the
 * `-j NAME` rules of INPUT and OUTPUT (by handle), the lock chain, the empty
 * accept-policy base chains the lock created (handle above the lock chain's,
 * or, once nothing else is left in the table, not the table's first object),
 * and the table itself when nothing else is left in it. Deleting a chain
 * that gained a rule since it was read fails, so a concurrent change aborts
 * the whole transaction instead of being lost.
 *
 * @example
 * ```ts
 * import { planNftUnlockCommands } from "./nft_unlock_planner.ts";
 *
 * const commands = planNftUnlockCommands({
 *   family: "ip", otherObjects: 0, sets: {},
 *   chains: [
 *     { name: "NETLOCK", handle: 1 },
 *     { name: "INPUT", handle: 2, hook: "input", policy: "accept" },
 *   ],
 *   rules: [{ chain: "INPUT", handle: 3, plainJumpTo: "NETLOCK" }, { chain: "NETLOCK", handle: 4 }],
 * }, "NETLOCK");
 * console.assert(commands.join("\n") === [
 *   "delete rule ip filter INPUT handle 3",
 *   "flush chain ip filter NETLOCK",
 *   "delete chain ip filter NETLOCK",
 *   "delete chain ip filter INPUT",
 *   "delete table ip filter",
 * ].join("\n"));
 * ```
 *
 * @param view The family's filter table as nft lists it.
 * @param names The lock chains' names (netlock's, and CRIU's with `--criu`).
 * @returns The commands, in order; empty when there is no lock chain.
 */
export function planNftUnlockCommands(view: NftTableView, names: string | string[]): string[] {
  const wanted = new Set(typeof names === "string" ? [names] : names);
  const lockChains = view.chains.filter((chain) => wanted.has(chain.name));
  if (lockChains.length === 0) return [];
  const present = new Set(lockChains.map((chain) => chain.name));
  const oldest = Math.min(...lockChains.map((chain) => chain.handle));
  const table = `${view.family} filter`;
  const jumps = view.rules.filter((rule) =>
    (rule.chain === "INPUT" || rule.chain === "OUTPUT") && rule.plainJumpTo !== undefined &&
    present.has(rule.plainJumpTo)
  );
  const commands = jumps.map((rule) => `delete rule ${table} ${rule.chain} handle ${rule.handle}`);
  for (const chain of lockChains) {
    commands.push(`flush chain ${table} ${chain.name}`, `delete chain ${table} ${chain.name}`);
  }
  const removedRules = new Set(jumps.map((rule) => rule.handle));
  const remainingRules = view.rules.filter((rule) =>
    !present.has(rule.chain) && !removedRules.has(rule.handle)
  );
  const emptyAcceptBase = (chain: NftTableView["chains"][number]) =>
    (chain.name === "INPUT" || chain.name === "OUTPUT") && chain.policy === "accept" &&
    !remainingRules.some((rule) => rule.chain === chain.name);
  // The lock that created the base chains may be gone already (removed
  // while another lock was there): a table left with nothing but empty
  // accept-policy INPUT/OUTPUT chains, none of them the table's first object
  // (handle 1, which a table made for a user's own rule starts with), was
  // made for a lock.
  const leftovers = view.chains.filter((chain) => !present.has(chain.name));
  const madeForALock = view.otherObjects === 0 && leftovers.every(emptyAcceptBase) &&
    leftovers.every((chain) => chain.handle > 1);
  const createdByLock = view.chains.filter((chain) =>
    emptyAcceptBase(chain) && (chain.handle > oldest || madeForALock)
  );
  for (const chain of createdByLock) commands.push(`delete chain ${table} ${chain.name}`);
  const remainingChains = view.chains.length - lockChains.length - createdByLock.length;
  if (remainingChains === 0 && view.otherObjects === 0) commands.push(`delete table ${table}`);
  return commands;
}
