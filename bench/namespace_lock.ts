/**
 * Namespace lock and unlock per backend, netlock's library against CRIU's
 * own sequences, side by side and interleaved in one run, in a namespace
 * this script creates and deletes. Run as root:
 *
 *   deno run --allow-all bench/namespace_lock.ts [ROUNDS]
 *
 * CRIU's iptables sequence is what criu/net.c feeds to iptables-restore (v4,
 * then v6) for the lock, and its unlock text for the unlock; its nftables
 * sequence creates the `inet CRIU-<id>` table and deletes it. Each runs
 * through nsenter, as a tool would from a shell.
 */
import { lockNetwork } from "../mod.ts";
import { renderIptablesLock } from "../lib/iptables/ruleset.ts";

const rounds = Number(Deno.args[0] ?? 30);
const name = `netlock-bench-${Deno.pid}`;
const path = `/run/netns/${name}`;

const CRIU_LOCK = renderIptablesLock({ name: "CRIU", mark: 0xC114 });
const CRIU_NFT_TABLE = "inet CRIU-0123456789abcdef";
const CRIU_NFT_LOCK = `add table ${CRIU_NFT_TABLE}\n` +
  `add chain ${CRIU_NFT_TABLE} output { type filter hook output priority 0; policy drop; }\n` +
  `add rule ${CRIU_NFT_TABLE} output meta mark 0xC114 accept\n` +
  `add chain ${CRIU_NFT_TABLE} input { type filter hook input priority 0; policy drop; }\n` +
  `add rule ${CRIU_NFT_TABLE} input meta mark 0xC114 accept\n`;
const CRIU_UNLOCK =
  "*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\n-X CRIU\nCOMMIT\n";

async function run(argv: string[], stdin?: string): Promise<void> {
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const output = await child.output();
  if (!output.success) {
    throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(output.stderr)}`);
  }
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const inNs = (argv: string[], stdin?: string) =>
  run(["nsenter", `--net=${path}`, "--", ...argv], stdin);

const criu = {
  iptables: {
    lock: async () => {
      await inNs(["iptables-restore", "-w", "--noflush"], CRIU_LOCK);
      await inNs(["ip6tables-restore", "-w", "--noflush"], CRIU_LOCK);
    },
    unlock: async () => {
      await inNs(["iptables-restore", "-w", "--noflush"], CRIU_UNLOCK);
      await inNs(["ip6tables-restore", "-w", "--noflush"], CRIU_UNLOCK);
      // CRIU leaves empty filter tables behind; start the next run from the same fresh state.
      await inNs(["nft", "flush", "ruleset"]);
    },
  },
  nftables: {
    lock: () => inNs(["nft", "-f", "-"], CRIU_NFT_LOCK),
    unlock: () => inNs(["nft", "delete", "table", ...CRIU_NFT_TABLE.split(" ")]),
  },
};

await run(["ip", "netns", "add", name]);
try {
  const backends = ["iptables", "nftables"] as const;
  const samples = new Map<string, number[]>();
  const add = (key: string, ms: number) => samples.set(key, [...(samples.get(key) ?? []), ms]);
  for (let i = 0; i < rounds + 2; i++) {
    for (const backend of backends) {
      const criuLock = await time(criu[backend].lock);
      // The reference unlock's time excludes the flush that resets the state.
      const start = performance.now();
      await criu[backend].unlock();
      const criuUnlock = backend === "iptables" ? NaN : performance.now() - start;
      let lock: Awaited<ReturnType<typeof lockNetwork>> | undefined;
      const lockMs = await time(async () => lock = await lockNetwork({ netns: path }, { backend }));
      const unlockMs = await time(() => lock!.unlock());
      if (i < 2) continue; // warm-up
      add(`${backend} criu lock`, criuLock);
      if (!Number.isNaN(criuUnlock)) add(`${backend} criu unlock`, criuUnlock);
      add(`${backend} lock`, lockMs);
      add(`${backend} unlock`, unlockMs);
    }
    // CRIU's iptables unlock, timed alone (without the reset flush).
    await criu.iptables.lock();
    const start = performance.now();
    await inNs(["iptables-restore", "-w", "--noflush"], CRIU_UNLOCK);
    await inNs(["ip6tables-restore", "-w", "--noflush"], CRIU_UNLOCK);
    if (i >= 2) add("iptables criu unlock", performance.now() - start);
    await inNs(["nft", "flush", "ruleset"]);
  }
  console.log(`namespace lock, ${rounds} interleaved rounds, medians in ms`);
  console.log("backend    operation   netlock   CRIU sequence   ratio");
  for (const backend of backends) {
    for (const op of ["lock", "unlock"]) {
      const ours = median(samples.get(`${backend} ${op}`)!);
      const ref = median(samples.get(`${backend} criu ${op}`)!);
      console.log(
        `${backend.padEnd(10)} ${op.padEnd(10)} ${ours.toFixed(2).padStart(8)} ${
          ref.toFixed(2).padStart(15)
        } ${(ours / ref).toFixed(2).padStart(7)}`,
      );
    }
  }
} finally {
  await run(["ip", "netns", "delete", name]);
}
