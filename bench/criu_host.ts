/**
 * CRIU and netlock for a process tree that shares CRIU's network namespace
 * (a service on the host): a tree whose four children hold N loopback
 * connections to a peer outside it that sends on every connection all along
 * is dumped (final dump: the tree is killed) and restored, once per method
 * and round, methods interleaved. Figures: CRIU's own `frozen_time` and
 * `restore_time` (from its stats images), and the outage the peer saw: the
 * longest a connection waited for its echo. A method whose connections were
 * reset is reported as such.
 *
 * Methods: CRIU's `--network-lock iptables` / `nftables`, `skip` (no lock),
 * `skip` with a no-op action script (the floor of any action script), and
 * `skip` with netlock's `criu-hook.sh` for each backend.
 *
 *   deno run -A bench/criu_host.ts [ROUNDS] [CONNECTIONS,...]   (default 3, 200,1000,10000)
 *
 * CRIU's own locks are measured up to 1,000 connections (above, they take
 * minutes: the table says so); `NETLOCK_BENCH_CRIU_OWN=0` leaves them out
 * at every count; `NETLOCK_BENCH_OTHER_HOOK=/path/to/criu-hook.sh` adds
 * another checkout's hook, for each backend. The images go to a tmpfs the
 * benchmark mounts.
 *
 * Needs root, python3 and a CRIU (`CRIU_BIN` or `criu` on PATH); without a
 * CRIU it says why and measures nothing. Everything runs in a namespace it
 * creates (the "host"), on loopback.
 *
 * @module
 */

import { criuDump, criuRestore, type Setting } from "../tests/helpers/criu.ts";
import { createNetns } from "../tests/helpers/netns.ts";
import { startPeer, startTree } from "../tests/helpers/tree.ts";
import { criuStat, findCriu, imagesTmpfs } from "./criu_stats.ts";
import { median } from "./measure.ts";

/** One way of locking the network of a tree in CRIU's namespace. */
interface Method {
  name: string;
  lock?: string[];
  env?: Record<string, string>;
}

/** One measurement: CRIU's figures and the peer's outage, or what went wrong. */
interface Sample {
  frozenMs?: number;
  restoreMs?: number;
  outageMs?: number;
  failure?: string;
}

/** One row: the medians of a method at a number of connections. */
export interface HostRow {
  method: string;
  connections: number;
  frozenMs?: number;
  restoreMs?: number;
  outageMs?: number;
  /** What went wrong in any round (resets, a crash), if anything. */
  failure?: string;
  samples: Sample[];
}

const PORT = 7800;
const CHILDREN = 4;
/** The peer sends 1 KiB on every connection every this many ms. */
const PAUSE_MS = 100;
/** The most connections CRIU's own locks are measured at. */
const CRIU_OWN_MAX = 1000;

/**
 * Measures every method `rounds` times at each number of connections.
 *
 * @param rounds Rounds per method.
 * @param counts Numbers of connections.
 * @returns One row per method and number.
 */
export async function criuHostBench(rounds: number, counts: number[]): Promise<HostRow[]> {
  await using tmpfs = await imagesTmpfs();
  const criuOwn = Deno.env.get("NETLOCK_BENCH_CRIU_OWN") !== "0";
  const other = Deno.env.get("NETLOCK_BENCH_OTHER_HOOK");
  const noop = await Deno.makeTempFile({ suffix: ".sh" });
  await Deno.writeTextFile(noop, "#!/bin/sh\nexit 0\n");
  await Deno.chmod(noop, 0o755);
  const methods: Method[] = [
    { name: "CRIU --network-lock iptables", lock: ["--network-lock", "iptables"] },
    { name: "CRIU --network-lock nftables", lock: ["--network-lock", "nftables"] },
    { name: "skip (no lock)", lock: ["--network-lock", "skip"] },
    {
      name: "skip + no-op action script",
      lock: ["--network-lock", "skip", "--action-script", noop],
    },
    ...(["iptables", "nftables"] as const).map((backend) => ({
      name: `skip + criu-hook.sh (netlock ${backend})`,
      env: { NETLOCK_BACKEND: backend },
    })),
    // Another checkout's hook, to judge a change side by side (as bench/criu_hook.ts).
    ...(other
      ? (["iptables", "nftables"] as const).map((backend) => ({
        name: `skip + ${other} (netlock ${backend})`,
        lock: ["--network-lock", "skip", "--action-script", other],
        env: { NETLOCK_BACKEND: backend },
      }))
      : []),
  ];
  const rows: HostRow[] = [];
  try {
    for (const count of counts) {
      // CRIU's own locks take minutes from a few thousand connections on
      // (one process per rule, 50 s of restore at 1,000 here): not waited for.
      const skipped = count > CRIU_OWN_MAX || !criuOwn
        ? methods.filter((m) => m.name.startsWith("CRIU "))
        : [];
      const run = methods.filter((m) => !skipped.includes(m));
      const samples = new Map(run.map((m) => [m.name, [] as Sample[]]));
      for (const method of skipped) {
        rows.push({
          method: method.name,
          connections: count,
          frozenMs: NaN,
          restoreMs: NaN,
          outageMs: undefined,
          failure: criuOwn
            ? `not run above ${CRIU_OWN_MAX} connections (too slow)`
            : "not run (NETLOCK_BENCH_CRIU_OWN=0)",
          samples: [],
        });
      }
      for (let round = 0; round < rounds; round++) {
        for (const method of run) {
          const sample = await dumpAndRestore(method, count, tmpfs.path);
          samples.get(method.name)!.push(sample);
          console.error(`    ${method.name}: ${sample.failure ?? "ok"}`);
        }
        console.error(`  host ${count} connections: round ${round + 1}/${rounds}`);
      }
      for (const method of run) {
        const all = samples.get(method.name)!;
        const good = all.filter((s) => s.failure === undefined);
        const of = (key: "frozenMs" | "restoreMs" | "outageMs") =>
          good.length ? median(good.map((s) => s[key]!)) : undefined;
        rows.push({
          method: method.name,
          connections: count,
          frozenMs: of("frozenMs") ?? median(all.flatMap((s) => s.frozenMs ?? [])),
          restoreMs: of("restoreMs") ?? median(all.flatMap((s) => s.restoreMs ?? [])),
          outageMs: of("outageMs"),
          failure: all.find((s) => s.failure)?.failure,
          samples: all,
        });
      }
    }
  } finally {
    await Deno.remove(noop);
  }
  return rows;
}

async function dumpAndRestore(method: Method, count: number, under: string): Promise<Sample> {
  await using host = await createNetns();
  const images = await Deno.makeTempDir({ prefix: "netlock-criu-host-", dir: under });
  const at = { netns: host, address: "127.0.0.1" };
  await using tree = await startTree(at, PORT, count, CHILDREN);
  await using peer = await startPeer(host, at, PORT, count, PAUSE_MS);
  try {
    await peer.flowing(count * 1024);
    tree.members();
    const setting: Setting = { host, ...(method.lock ? { lock: method.lock } : {}) };
    const env = method.env ?? {};
    const dump = await criuDump(setting, tree, images, [], env);
    if (dump.code !== 0) return { failure: `dump failed: ${lastError(dump.errors)}` };
    const frozenMs = await criuStat(images, "dump");
    await tree.gone();
    const restore = await criuRestore(setting, images, env);
    if (restore.code !== 0) {
      return { frozenMs, failure: `restore failed: ${lastError(restore.errors)}` };
    }
    tree.restored(restore.pid);
    const restoreMs = await criuStat(images, "restore");
    await peer.flowing(count * 1024).catch(() => {});
    const verdict = await peer.stop();
    if (!verdict.ok) {
      const why = verdict.resets > 0 ? `${verdict.resets} connections reset` : verdict.errors[0];
      return { frozenMs, restoreMs, failure: why };
    }
    return { frozenMs, restoreMs, outageMs: verdict.maxSilenceMs };
  } finally {
    await Deno.remove(images, { recursive: true });
  }
}

function lastError(errors: string): string {
  return errors.split("\n").filter((line) => /Error/.test(line)).at(-1)?.replace(/^.*?: /, "") ??
    "?";
}

/** Prints the rows as a Markdown table, with netlock's ratios to CRIU's locks. */
export function printHostTable(rows: HostRow[]): void {
  const ms = (value?: number) =>
    value === undefined || Number.isNaN(value) ? "-" : `${(value / 1000).toFixed(2)} s`;
  console.log("| connections | method | frozen | restore | outage | |");
  console.log("| ---: | --- | ---: | ---: | ---: | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.connections} | ${r.method} | ${ms(r.frozenMs)} | ${ms(r.restoreMs)} | ` +
        `${ms(r.outageMs)} | ${r.failure ?? ""} |`,
    );
  }
  for (const count of new Set(rows.map((r) => r.connections))) {
    const of = (prefix: string) =>
      rows.find((r) => r.connections === count && r.method.startsWith(prefix))!;
    const criuIpt = of("CRIU --network-lock iptables");
    const criuNft = of("CRIU --network-lock nftables");
    const skip = of("skip (no lock)");
    const noop = of("skip + no-op");
    for (const backend of ["iptables", "nftables"]) {
      const ours = of(`skip + criu-hook.sh (netlock ${backend})`);
      const ratio = (key: "frozenMs" | "restoreMs" | "outageMs") =>
        ours[key] && criuIpt[key] ? (ours[key]! / criuIpt[key]!).toFixed(3) : "-";
      const above = (key: "frozenMs" | "restoreMs") =>
        ours[key] !== undefined && noop[key] !== undefined
          ? `${(ours[key]! - noop[key]!).toFixed(0)} ms`
          : "-";
      const criuAbove = (key: "frozenMs" | "restoreMs") =>
        criuNft.failure === undefined && criuNft[key] !== undefined && skip[key] !== undefined
          ? `${(criuNft[key]! - skip[key]!).toFixed(0)} ms`
          : "-";
      console.log(
        `${count} connections, netlock ${backend}: / CRIU iptables: frozen ${ratio("frozenMs")}, ` +
          `restore ${ratio("restoreMs")}, outage ${ratio("outageMs")}; above the no-op script: ` +
          `frozen ${above("frozenMs")}, restore ${above("restoreMs")} (CRIU nftables above skip: ` +
          `frozen ${criuAbove("frozenMs")}, restore ${criuAbove("restoreMs")})`,
      );
    }
  }
}

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? "3");
  const counts = (Deno.args[1] ?? "200,1000,10000").split(",").map(Number);
  const found = await findCriu();
  if ("missing" in found) {
    console.log(`criu host: skipped: ${found.missing}`);
    Deno.exit(0);
  }
  printHostTable(await criuHostBench(rounds, counts));
}
