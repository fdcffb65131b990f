/**
 * CRIU's own lock and unlock sequences (criu/net.c), run as a tool would run
 * them from a shell: one spawn per step, through nsenter.
 */
import { CRIU_IPTABLES_LOCK, criuNftLock } from "../tests/helpers/criu_texts.ts";
import { run } from "./measure.ts";

/** One backend's sequences. */
export interface Sequence {
  lock(netnsPath: string): Promise<void>;
  unlock(netnsPath: string): Promise<void>;
  /** Back to an empty namespace (CRIU's iptables unlock leaves empty tables). */
  reset(netnsPath: string): Promise<void>;
}

const LOCK = CRIU_IPTABLES_LOCK;
const TABLE = "inet CRIU-0123456789abcdef";
const inNs = (path: string, argv: string[], input?: string) =>
  run(["nsenter", `--net=${path}`, "--", ...argv], input);

/** CRIU's sequences per backend. */
export const CRIU: Record<"iptables" | "nftables", Sequence> = {
  iptables: {
    async lock(path) {
      await inNs(path, ["iptables-restore", "-w", "--noflush"], LOCK);
      await inNs(path, ["ip6tables-restore", "-w", "--noflush"], LOCK);
    },
    async unlock(path) {
      // Delete the jumps (v4, v6), check they are gone, delete the chain (v4, v6).
      const jumps = "*filter\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\nCOMMIT\n";
      const chain = "*filter\n:CRIU - [0:0]\n-X CRIU\nCOMMIT\n";
      await inNs(path, ["iptables-restore", "-w", "--noflush"], jumps);
      await inNs(path, ["ip6tables-restore", "-w", "--noflush"], jumps);
      await inNs(path, ["sh", "-c", "iptables -w -C INPUT -j CRIU 2>/dev/null; true"]);
      await inNs(path, ["iptables-restore", "-w", "--noflush"], chain);
      await inNs(path, ["ip6tables-restore", "-w", "--noflush"], chain);
    },
    reset: (path) => inNs(path, ["nft", "flush", "ruleset"]),
  },
  nftables: {
    lock: (path) => inNs(path, ["nft", "-f", "-"], criuNftLock(TABLE)),
    unlock: (path) => inNs(path, ["nft", "delete", "table", ...TABLE.split(" ")]),
    reset: async () => {},
  },
};
