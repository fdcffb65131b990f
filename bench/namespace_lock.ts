/**
 * Namespace lock and unlock, netlock's library against CRIU's own sequence,
 * side by side and interleaved in one run, in a namespace this script
 * creates and deletes. Run as root:
 *
 *   deno run --allow-all bench/namespace_lock.ts [ROUNDS]
 *
 * CRIU's sequence is what criu/net.c feeds to iptables-restore (v4, then v6)
 * for the lock, and its unlock text for the unlock, each through nsenter.
 */
import { lockNetwork } from "../mod.ts";
import { renderIptablesLock } from "../lib/iptables/ruleset.ts";

const rounds = Number(Deno.args[0] ?? 30);
const name = `netlock-bench-${Deno.pid}`;
const path = `/run/netns/${name}`;

const CRIU_LOCK = renderIptablesLock({ name: "CRIU", mark: 0xC114 });
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

await run(["ip", "netns", "add", name]);
try {
  const samples = {
    criuLock: [] as number[],
    criuUnlock: [] as number[],
    lock: [] as number[],
    unlock: [] as number[],
  };
  for (let i = 0; i < rounds + 2; i++) {
    const criuLock = await time(async () => {
      await run(
        ["nsenter", `--net=${path}`, "--", "iptables-restore", "-w", "--noflush"],
        CRIU_LOCK,
      );
      await run(
        ["nsenter", `--net=${path}`, "--", "ip6tables-restore", "-w", "--noflush"],
        CRIU_LOCK,
      );
    });
    const criuUnlock = await time(async () => {
      await run(
        ["nsenter", `--net=${path}`, "--", "iptables-restore", "-w", "--noflush"],
        CRIU_UNLOCK,
      );
      await run(
        ["nsenter", `--net=${path}`, "--", "ip6tables-restore", "-w", "--noflush"],
        CRIU_UNLOCK,
      );
    });
    // CRIU leaves empty filter tables behind; start netlock from the same fresh state.
    await run(["nsenter", `--net=${path}`, "--", "nft", "flush", "ruleset"]);
    let lock: Awaited<ReturnType<typeof lockNetwork>> | undefined;
    const lockMs = await time(async () => lock = await lockNetwork({ netns: path }));
    const unlockMs = await time(() => lock!.unlock());
    if (i < 2) continue; // warm-up
    samples.criuLock.push(criuLock);
    samples.criuUnlock.push(criuUnlock);
    samples.lock.push(lockMs);
    samples.unlock.push(unlockMs);
  }
  const rows = [
    ["lock", median(samples.lock), median(samples.criuLock)],
    ["unlock", median(samples.unlock), median(samples.criuUnlock)],
  ] as const;
  console.log(`namespace lock, iptables backend, ${rounds} interleaved rounds, medians (ms)`);
  console.log("operation   netlock   CRIU sequence   ratio");
  for (const [op, ours, criu] of rows) {
    console.log(
      `${op.padEnd(10)} ${ours.toFixed(2).padStart(8)} ${criu.toFixed(2).padStart(15)} ${
        (ours / criu).toFixed(2).padStart(7)
      }`,
    );
  }
} finally {
  await run(["ip", "netns", "delete", name]);
}
