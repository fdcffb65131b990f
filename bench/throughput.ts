/**
 * What a connection lock costs the rest of the namespace while it stands
 * (after a final dump, until the restore, possibly on another machine): a
 * process holds N loopback connections, and iperf3 runs on another port of
 * the same loopback, without a lock, and with the process's connections
 * locked by each backend, and beside the least an nftables lock of them can
 * be (`nft set by hand`: one set of the same connections, one lookup a
 * hook, nothing else); rounds interleaved, medians, and each method's
 * throughput as a share of the unlocked one. Also how long each lock took.
 *
 *   deno run -A bench/throughput.ts [CONNECTIONS] [ROUNDS] [SECONDS]   (10000, 3, 3)
 *
 * Needs root, python3 and iperf3 (`apt-get install iperf3`); says why it
 * measures nothing without them.
 *
 * @module
 */

import { lockNetwork } from "../mod.ts";
import { createNetns, sh, type TestNetns } from "../tests/helpers/netns.ts";
import { median } from "./measure.ts";
import { lineReader } from "../tests/helpers/lines.ts";

const HOLDER = `import resource, socket, sys, time
role, n = sys.argv[1], int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1000, n + 1000))
held = []
if role == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 9000)); s.listen(4096); print("ready", flush=True)
    while len(held) < n: held.append(s.accept()[0])
else:
    for _ in range(n): held.append(socket.create_connection(("127.0.0.1", 9000)))
    print("ready", flush=True)
time.sleep(100000)
`;

/** One row: a method's median throughput and lock time. */
export interface ThroughputRow {
  method: string;
  gbits: number;
  /** Share of the unlocked throughput. */
  share: number;
  lockMs?: number;
  samples: number[];
}

async function spawnIn(netns: TestNetns, argv: string[]): Promise<Deno.ChildProcess> {
  const child = new Deno.Command("nsenter", {
    args: [`--net=${netns.path}`, "--", ...argv],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  // Whole lines, then drained: a pipe closed after a partial read kills the child.
  const output = lineReader(child.stdout);
  const first = await output.next();
  output.drain();
  if (first !== "ready") throw new Error(`${argv.join(" ")} did not start: ${first}`);
  return child;
}

async function iperf(netns: TestNetns, seconds: number): Promise<number> {
  const result = await sh([
    "nsenter",
    `--net=${netns.path}`,
    "--",
    "iperf3",
    "-c",
    "127.0.0.1",
    "-p",
    "5201",
    "-t",
    String(seconds),
    "-J",
  ]);
  if (result.code !== 0) throw new Error(`iperf3 failed: ${result.stdout}${result.stderr}`);
  return JSON.parse(result.stdout).end.sum_received.bits_per_second / 1e9;
}

/**
 * Measures iperf3's throughput beside `connections` locked connections.
 *
 * @param connections How many connections the locked process holds.
 * @param rounds Rounds per method.
 * @param seconds Length of each iperf3 run.
 * @returns One row per method.
 */
export async function throughputBench(
  connections: number,
  rounds: number,
  seconds: number,
): Promise<ThroughputRow[]> {
  await using netns = await createNetns();
  const server = await spawnIn(netns, ["python3", "-c", HOLDER, "server", String(connections)]);
  const client = await spawnIn(netns, ["python3", "-c", HOLDER, "client", String(connections)]);
  const iperfServer = new Deno.Command("nsenter", {
    args: [`--net=${netns.path}`, "--", "iperf3", "-s", "-p", "5201"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const methods = ["no lock", "nft set by hand", "nftables", "iptables"] as const;
  const byHand = await handMadeSet(netns);
  const samples = new Map(methods.map((m) => [m, [] as number[]]));
  const lockTimes = new Map(methods.map((m) => [m, [] as number[]]));
  try {
    for (let round = 0; round < rounds; round++) {
      for (const method of methods) {
        if (method === "no lock") {
          samples.get(method)!.push(await iperf(netns, seconds));
          continue;
        }
        if (method === "nft set by hand") {
          const start = performance.now();
          await netns.run(["nft", "-f", byHand.path]);
          lockTimes.get(method)!.push(performance.now() - start);
          try {
            samples.get(method)!.push(await iperf(netns, seconds));
          } finally {
            await netns.run(["nft", "delete", "table", "inet", "handset"]);
          }
          continue;
        }
        const start = performance.now();
        const lock = await lockNetwork(client.pid, {
          mode: "connections",
          backend: method,
          timeoutMs: 120_000,
        });
        lockTimes.get(method)!.push(performance.now() - start);
        if (lock.connections !== connections) {
          throw new Error(`${method} locked ${lock.connections} connections, not ${connections}`);
        }
        try {
          samples.get(method)!.push(await iperf(netns, seconds));
        } finally {
          await lock.unlock();
        }
      }
      console.error(`  throughput round ${round + 1}/${rounds}`);
    }
  } finally {
    await Deno.remove(byHand.path);
    for (const child of [server, client, iperfServer]) {
      child.kill("SIGKILL");
      await child.status;
    }
    await server.stdout.cancel().catch(() => {});
    await client.stdout.cancel().catch(() => {});
  }
  const unlocked = median(samples.get("no lock")!);
  return methods.map((method) => ({
    method,
    gbits: median(samples.get(method)!),
    share: median(samples.get(method)!) / unlocked,
    ...(lockTimes.get(method)!.length ? { lockMs: median(lockTimes.get(method)!) } : {}),
    samples: samples.get(method)!,
  }));
}

/**
 * The least nftables lock of the namespace's established TCP connections:
 * one set of `addr . port . addr . port` (remote first, as netlock keys
 * them) and one lookup a hook, with nothing else in its chains; written to
 * a file for `nft -f`.
 */
async function handMadeSet(netns: TestNetns): Promise<{ path: string }> {
  const ss = await netns.run(["ss", "-tnH", "state", "established"]);
  const elements = ss.stdout.trim().split("\n").map((line) => line.trim().split(/\s+/).slice(-2))
    .filter(([local, remote]) => local?.includes(":") && remote?.includes(":"))
    .map(([local, remote]) => {
      const [la, lp] = [local.slice(0, local.lastIndexOf(":")), local.split(":").at(-1)];
      const [ra, rp] = [remote.slice(0, remote.lastIndexOf(":")), remote.split(":").at(-1)];
      return `${ra} . ${rp} . ${la} . ${lp}`;
    });
  const path = await Deno.makeTempFile({ prefix: "nltest-handset-" });
  let text = "table inet handset {\n\tset c4 {\n\t\ttype ipv4_addr . inet_service . " +
    "ipv4_addr . inet_service\n\t}\n" +
    "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n" +
    "\t\tip saddr . tcp sport . ip daddr . tcp dport @c4 drop\n\t}\n" +
    "\tchain output {\n\t\ttype filter hook output priority 0; policy accept;\n" +
    "\t\tip daddr . tcp dport . ip saddr . tcp sport @c4 drop\n\t}\n}\n";
  for (let i = 0; i < elements.length; i += 1000) {
    text += `add element inet handset c4 { ${elements.slice(i, i + 1000).join(", ")} }\n`;
  }
  await Deno.writeTextFile(path, text);
  return { path };
}

/** Prints the rows as a Markdown table. */
export function printThroughputTable(rows: ThroughputRow[], connections: number): void {
  console.log(`| iperf3 beside ${connections} locked connections | Gbit/s | share | lock took |`);
  console.log("| --- | ---: | ---: | ---: |");
  for (const r of rows) {
    const lock = r.lockMs === undefined ? "-" : `${r.lockMs.toFixed(0)} ms`;
    console.log(
      `| ${r.method} | ${r.gbits.toFixed(1)} | ${(r.share * 100).toFixed(0)}% | ${lock} |`,
    );
  }
}

if (import.meta.main) {
  const [connections, rounds, seconds] = [
    Number(Deno.args[0] ?? "10000"),
    Number(Deno.args[1] ?? "3"),
    Number(Deno.args[2] ?? "3"),
  ];
  const missing = (await sh(["sh", "-c", "command -v iperf3 python3 >/dev/null"])).code !== 0;
  if (missing) {
    console.log("throughput: skipped: needs iperf3 and python3 (apt-get install iperf3)");
    Deno.exit(0);
  }
  printThroughputTable(await throughputBench(connections, rounds, seconds), connections);
}
