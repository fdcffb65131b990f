/**
 * netlock's benchmark suite: `deno task bench` (as root). Everything runs in
 * namespaces this script creates and deletes, interleaved, several rounds,
 * medians reported next to the reference measured in the same run:
 *
 *   (a) CRIU's own sequences from a shell-like spawn through nsenter,
 *   (b) netlock's library lockNetwork / unlock in this warm process,
 *   (c) the CLI end to end against the floor: an empty `deno run` plus (a),
 *   (d) connection mode with 100, 1,000 and 10,000 connections,
 *   (e) 100 namespaces locked and unlocked in one CLI call,
 *   (f) iperf3's throughput beside 10,000 locked connections (bench/throughput.ts),
 *   plus the CLI's peak memory and start-up (--version, --help, rules).
 *
 * A ratio of two medians comes with its 95% bootstrap interval (ratioInterval
 * in bench/measure.ts): "met" compares the ratio itself with the target, and
 * the interval says how much another run of the same rounds could move it.
 *
 * Options: `--rounds N` (default 20), `--connections N,N,...`, `--json FILE`,
 * `--throughput-connections N` (10000),
 * `--only namespace,cli,connections,many,throughput,criu` (default all). The `criu` part
 * (bench/criu_hook.ts) needs a real CRIU (`CRIU_BIN` or `criu` on PATH) and
 * says why it is skipped without one; it runs `--rounds` rounds, at most 10.
 */
import { parseArgs } from "node:util";
import { lockNetwork, unlockNetwork } from "../mod.ts";
import {
  createNetns,
  startEndpoint,
  startSleeper,
  type TestNetns,
} from "../tests/helpers/netns.ts";
import { CRIU, type Sequence } from "./criu_sequences.ts";
import { CRIU_IPTABLES_LOCK } from "../tests/helpers/criu_texts.ts";
import { median, peakRssKiB, ratioInterval, run, time } from "./measure.ts";
import { criuHookBench, printCriuTable } from "./criu_hook.ts";
import { findCriu } from "./criu_stats.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string", default: "20" },
    connections: { type: "string", default: "100,1000,10000" },
    json: { type: "string" },
    only: { type: "string", default: "namespace,cli,connections,many,throughput,criu" },
    "throughput-connections": { type: "string", default: "10000" },
  },
});
const ONLY = new Set(values.only!.split(","));
for (const part of ONLY) {
  if (!["namespace", "cli", "connections", "many", "throughput", "criu"].includes(part)) {
    console.error(
      `error: --only takes namespace, cli, connections, many, throughput, criu; not ${part}`,
    );
    Deno.exit(2);
  }
}
const ROUNDS = Number(values.rounds);
const CONNECTIONS = values.connections!.split(",").map(Number);
const CLI = new URL("../cli.ts", import.meta.url).pathname;
/** The argv of netlock's CLI run as the issue measures it. */
const netlockCli = (
  ...args: string[]
) => [Deno.execPath(), "run", "--allow-run=nsenter", CLI, ...args];
const EMPTY = await Deno.makeTempFile({ suffix: ".ts" });
// A fairer floor for the CLI: the least a Deno program must do to run
// CRIU's lock (a cold Deno.Command, its streams and timers included).
const MINIMAL = await Deno.makeTempFile({ suffix: ".ts" });
await Deno.writeTextFile(
  MINIMAL,
  `const text = ${JSON.stringify(CRIU_IPTABLES_LOCK)};
for (const tool of ["iptables-restore", "ip6tables-restore"]) {
  const child = new Deno.Command("nsenter", {
    args: ["--net=" + Deno.args[0], "--", tool, "-w", "--noflush"],
    stdin: "piped", stdout: "null", stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  if (!(await child.status).success) Deno.exit(1);
}
`,
);

interface Row {
  group: string;
  what: string;
  netlockMs: number;
  referenceMs?: number;
  reference?: string;
  target?: number;
  /** The rounds behind both medians, when the ratio is of two medians (kept in `--json`). */
  samples?: { netlock: number[]; reference: number[] };
  /** The ratio's 95% interval (bench/measure.ts ratioInterval). */
  interval?: [number, number];
}
const rows: Row[] = [];
const add = (row: Row) => {
  if (row.samples) row.interval = ratioInterval(row.samples.netlock, row.samples.reference);
  rows.push(row);
  const ratio = row.referenceMs
    ? ` ratio ${(row.netlockMs / row.referenceMs).toFixed(2)}${intervalText(row)}`
    : "";
  console.error(`  ${row.group} ${row.what}: ${row.netlockMs.toFixed(1)} ms${ratio}`);
};
/** A row's two medians and the rounds behind them. */
const compared = (netlock: number[], reference: number[]) => ({
  netlockMs: median(netlock),
  referenceMs: median(reference),
  samples: { netlock, reference },
});

try {
  if (ONLY.has("namespace")) await namespaceLocks();
  if (ONLY.has("cli")) await cliEndToEnd();
  if (ONLY.has("connections")) { for (const n of CONNECTIONS) await connectionLocks(n); }
  if (ONLY.has("many")) await manyNamespaces(100);
  printTable();
  if (ONLY.has("throughput")) {
    const { printThroughputTable, throughputBench } = await import("./throughput.ts");
    const n = Number(values["throughput-connections"]);
    console.error(`(f) iperf3 beside ${n} locked connections`);
    printThroughputTable(await throughputBench(n, Math.min(ROUNDS, 3), 3), n);
  }
  if (ONLY.has("criu")) await criuHook();
  if (values.json) {
    await Deno.writeTextFile(
      values.json,
      JSON.stringify({ date: new Date().toISOString(), rounds: ROUNDS, rows }, null, 2),
    );
  }
} finally {
  await Deno.remove(EMPTY);
  await Deno.remove(MINIMAL);
}

async function namespaceLocks(): Promise<void> {
  console.error("(a)(b) namespace lock and unlock, library vs CRIU's sequences");
  await using netns = await createNetns();
  const samples = new Map<string, number[]>();
  const push = (key: string, ms: number) => samples.set(key, [...(samples.get(key) ?? []), ms]);
  for (let round = 0; round < ROUNDS + 2; round++) {
    const keep = round >= 2; // two warm-up rounds
    for (const backend of ["iptables", "nftables"] as const) {
      const criu: Sequence = CRIU[backend];
      const criuLock = await time(() => criu.lock(netns.path));
      const criuUnlock = await time(() => criu.unlock(netns.path));
      await criu.reset(netns.path);
      let lock: Awaited<ReturnType<typeof lockNetwork>> | undefined;
      const ours = await time(async () =>
        lock = await lockNetwork({ netns: netns.path }, { backend })
      );
      const oursUnlock = await time(() => lock!.unlock());
      if (!keep) continue;
      push(`${backend} criu lock`, criuLock);
      push(`${backend} criu unlock`, criuUnlock);
      push(`${backend} lock`, ours);
      push(`${backend} unlock`, oursUnlock);
    }
  }
  const of = (netlock: string, reference: string) =>
    compared(samples.get(netlock)!, samples.get(reference)!);
  for (const backend of ["iptables", "nftables"]) {
    add({
      group: `namespace ${backend}`,
      what: "library lock",
      ...of(`${backend} lock`, `${backend} criu lock`),
      reference: `CRIU's ${backend} lock sequence`,
      target: 1.0,
    });
    add({
      group: `namespace ${backend}`,
      what: "library unlock",
      ...of(`${backend} unlock`, `${backend} criu unlock`),
      reference: `CRIU's ${backend} unlock sequence`,
      target: backend === "iptables" ? 0.5 : 1.0,
    });
  }
  // The library unlock against CRIU's iptables unlock, whatever backend locked.
  add({
    group: "namespace nftables",
    what: "library unlock vs CRIU iptables unlock",
    ...of("nftables unlock", "iptables criu unlock"),
    reference: "CRIU's iptables unlock sequence",
    target: 0.5,
  });
}

async function cliEndToEnd(): Promise<void> {
  console.error("(c) CLI end to end vs empty deno run + CRIU's sequence");
  await using netns = await createNetns();
  // `netlock lock PID`, as operators call it: a process in the namespace.
  await using target = await startSleeper(netns);
  const lock: number[] = [];
  const unlock: number[] = [];
  const floorLock: number[] = [];
  const floorUnlock: number[] = [];
  const minimal: number[] = [];
  const startup = {
    empty: [] as number[],
    version: [] as number[],
    help: [] as number[],
    rules: [] as number[],
  };
  const cli = (verb: string) => run(netlockCli(verb, "-q", String(target.pid)));
  for (let round = 0; round < ROUNDS + 2; round++) {
    const empty = await time(() => run([Deno.execPath(), "run", EMPTY]));
    const version = await time(() => run(netlockCli("--version")));
    const help = await time(() => run(netlockCli("--help")));
    const rules = await time(() => run(netlockCli("rules")));
    if (round >= 2) {
      startup.empty.push(empty);
      startup.version.push(version);
      startup.help.push(help);
      startup.rules.push(rules);
    }
    const criuLock = await time(() => CRIU.iptables.lock(netns.path));
    const criuUnlock = await time(() => CRIU.iptables.unlock(netns.path));
    await CRIU.iptables.reset(netns.path);
    const ours = await time(() => cli("lock"));
    const oursUnlock = await time(() => cli("unlock"));
    const minimalLock = await time(() =>
      run([Deno.execPath(), "run", "--allow-run=nsenter", MINIMAL, netns.path])
    );
    await CRIU.iptables.reset(netns.path);
    if (round < 2) continue;
    minimal.push(minimalLock);
    floorLock.push(empty + criuLock);
    floorUnlock.push(empty + criuUnlock);
    lock.push(ours);
    unlock.push(oursUnlock);
  }
  for (const what of ["version", "help", "rules"] as const) {
    add({
      group: "cli start-up",
      what: what === "rules" ? "rules" : `--${what}`,
      ...compared(startup[what], startup.empty),
      reference: "empty deno run",
      target: 1.25,
    });
  }
  add({
    group: "cli iptables",
    what: "lock PID",
    ...compared(lock, floorLock),
    reference: "empty deno run + CRIU's lock",
    target: 1.5,
  });
  add({
    group: "cli iptables",
    what: "lock vs the least Deno program",
    ...compared(lock, minimal),
    reference: "deno run of CRIU's lock via Deno.Command",
  });
  add({
    group: "cli iptables",
    what: "unlock PID",
    ...compared(unlock, floorUnlock),
    reference: "empty deno run + CRIU's unlock",
    target: 1.5,
  });
  const rss = await peakRssKiB(netlockCli("lock", "-q", String(target.pid)));
  await cli("unlock");
  add({
    group: "cli iptables",
    what: "peak memory of lock (MiB)",
    netlockMs: rss / 1024,
    target: 80,
  });
}

async function connectionLocks(n: number): Promise<void> {
  console.error(`(d) connection mode with ${n} connections`);
  await using netns = await createNetns();
  await using _server = await startEndpoint(netns, ["server", "127.0.0.1:7100"]);
  await using client = await startEndpoint(netns, ["client", "127.0.0.1", "7100", String(n)]);
  for (const backend of ["iptables", "nftables"] as const) {
    const lock: number[] = [];
    const unlock: number[] = [];
    for (let round = 0; round < 3; round++) {
      let count = 0;
      lock.push(
        await time(async () => {
          count = (await lockNetwork(client.pid, { mode: "connections", backend })).connections;
        }),
      );
      if (count !== n) throw new Error(`locked ${count} connections, expected ${n}`);
      unlock.push(await time(() => unlockNetwork(client.pid, { mode: "connections" })));
    }
    const big = n >= 10_000;
    add({
      group: `connections ${backend}`,
      what: `lock ${n}`,
      netlockMs: median(lock),
      target: big ? (backend === "nftables" ? 400 : 600) : undefined,
    });
    add({
      group: `connections ${backend}`,
      what: `unlock ${n}`,
      netlockMs: median(unlock),
      target: big ? (backend === "nftables" ? 200 : 300) : undefined,
    });
  }
  await criuPerRuleLoop(netns, n);
  if (n >= 10_000) {
    const rss = await peakRssKiB(
      netlockCli("lock", "-q", "--mode", "connections", "-b", "nftables", String(client.pid)),
    );
    await unlockNetwork(client.pid, { mode: "connections" });
    add({
      group: "connections nftables",
      what: `peak memory of CLI lock ${n} (MiB)`,
      netlockMs: rss / 1024,
      target: 150,
    });
  }
}

/** CRIU's way: one `sh -c "iptables ..."` per rule; timed on 50 connections, extrapolated. */
async function criuPerRuleLoop(netns: TestNetns, n: number): Promise<void> {
  const sample = Math.min(n, 50);
  const rule = (i: number) =>
    `-p tcp -s 127.0.0.1 --sport 7100 -d 127.0.0.1 --dport ${
      10000 + i
    } -m mark ! --mark 0xC114 -j DROP`;
  // -A to lock, -D to unlock: both directions of each connection, one process each.
  const loop = (op: "-A" | "-D") =>
    time(async () => {
      for (let i = 0; i < sample; i++) {
        await run([
          "nsenter",
          `--net=${netns.path}`,
          "--",
          "sh",
          "-c",
          `iptables -w -t filter ${op} INPUT ${rule(i)}; iptables -w -t filter ${op} OUTPUT ${
            rule(i)
          }`,
        ]);
      }
    });
  const lockMs = await loop("-A");
  const unlockMs = await loop("-D");
  const factor = n / sample;
  const note = factor > 1 ? ` (${sample} connections timed, x${factor} extrapolated)` : "";
  add({
    group: "connections CRIU per-rule loop",
    what: `lock ${n}${note}`,
    netlockMs: lockMs * factor,
  });
  add({
    group: "connections CRIU per-rule loop",
    what: `unlock ${n}${note}`,
    netlockMs: unlockMs * factor,
  });
}

async function manyNamespaces(count: number): Promise<void> {
  console.error(`(e) ${count} namespaces locked and unlocked in one CLI call`);
  const namespaces: TestNetns[] = [];
  try {
    for (let i = 0; i < count; i++) namespaces.push(await createNetns());
    const args = namespaces.flatMap((n) => ["--netns", n.path]);
    const lockMs = await time(() => run(netlockCli("lock", "-q", ...args)));
    const unlockMs = await time(() => run(netlockCli("unlock", "-q", ...args)));
    add({
      group: `${count} namespaces`,
      what: "lock + unlock, one CLI call each",
      netlockMs: lockMs + unlockMs,
      target: 5000,
    });
  } finally {
    for (const netns of namespaces) await netns[Symbol.asyncDispose]();
  }
}

async function criuHook(): Promise<void> {
  const found = await findCriu();
  if ("missing" in found) {
    console.log(`criu: skipped: ${found.missing}`);
    return;
  }
  console.error("(f) netlock as CRIU's action script, measured by CRIU");
  printCriuTable(await criuHookBench(found.bin, Math.min(ROUNDS, 10)));
}

function printTable(): void {
  console.log(
    `netlock benchmark, ${
      new Date().toISOString()
    }, ${Deno.build.target}, ${navigator.hardwareConcurrency} cores, medians of ${ROUNDS} rounds`,
  );
  console.log("| what | netlock | reference | ratio (95% interval) | target | met |");
  console.log("| --- | ---: | ---: | ---: | ---: | :-: |");
  for (const row of rows) {
    const ratio = row.referenceMs ? row.netlockMs / row.referenceMs : undefined;
    const isMemory = row.what.includes("MiB");
    const value = isMemory ? `${row.netlockMs.toFixed(1)} MiB` : `${row.netlockMs.toFixed(1)} ms`;
    const reference = row.referenceMs ? `${row.referenceMs.toFixed(1)} ms (${row.reference})` : "";
    const target = row.target === undefined
      ? ""
      : ratio !== undefined
      ? `≤ ${row.target.toFixed(2)}×`
      : isMemory
      ? `≤ ${row.target} MiB`
      : `≤ ${row.target} ms`;
    const met = row.target === undefined
      ? ""
      : (ratio ?? row.netlockMs) <= row.target
      ? "yes"
      : "no";
    console.log(
      `| ${row.group}: ${row.what} | ${value} | ${reference} | ${
        ratio ? ratio.toFixed(2) + intervalText(row) : ""
      } | ${target} | ${met} |`,
    );
  }
}

/** " (0.98-1.16)": the ratio's 95% interval, when the row has one. */
function intervalText(row: Row): string {
  return row.interval ? ` (${row.interval[0].toFixed(2)}-${row.interval[1].toFixed(2)})` : "";
}
