/**
 * Builders of the objects `nft -j list …` prints, for test fixtures: the
 * base chains iptables-nft and netlock's table create, and rules.
 */

/** A base chain of type filter, priority 0, hooked where its name says (`INPUT` → `input`). */
export function baseChain(
  family: string,
  table: string,
  name: string,
  handle: number,
  policy: "accept" | "drop" = "accept",
): { chain: Record<string, unknown> } {
  const hook = name.toLowerCase();
  return { chain: { family, table, name, handle, type: "filter", hook, prio: 0, policy } };
}

/** A rule with the given expressions. */
export function rule(
  family: string,
  table: string,
  chain: string,
  handle: number,
  expr: unknown[],
): { rule: Record<string, unknown> } {
  return { rule: { family, table, chain, handle, expr } };
}
