/**
 * CRIU's own lock texts (criu/net.c), written out literally so that tests
 * and benchmarks install exactly what CRIU installs, independent of
 * netlock's renderers.
 */

/** CRIU's iptables lock, fed to iptables-restore / ip6tables-restore --noflush. */
export const CRIU_IPTABLES_LOCK = "*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n" +
  "-A CRIU -m mark --mark 0xC114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n";

/**
 * CRIU's nftables lock of table TABLE (`inet CRIU-<id>`): the commands of
 * `nftables_lock_network_internal()` in criu/net.c, one a line (CRIU runs
 * them one at a time through libnftables; `nft -f -` takes them as one).
 */
export function criuNftLock(table: string): string {
  return `create table ${table}\n` +
    `add chain ${table} output { type filter hook output priority 0; policy drop; }\n` +
    `add rule ${table} output meta mark 0xC114 accept\n` +
    `add chain ${table} input { type filter hook input priority 0; policy drop; }\n` +
    `add rule ${table} input meta mark 0xC114 accept\n`;
}
