/**
 * netlock as CRIU's network lock, measured by CRIU itself: a process in its
 * own network namespace with a live loopback TCP connection is dumped with
 * `--leave-running` and restored, once per method and round, methods
 * interleaved. The figures are CRIU's own statistics: `frozen_time` of the
 * `stats-dump` image and `restore_time` of `stats-restore`.
 *
 * Methods: CRIU's `--network-lock iptables` / `nftables`, `skip` (no lock),
 * `skip` with a no-op action script (the floor of any action script: CRIU
 * forks and waits for it at every action), and `skip` with netlock's
 * `criu-hook.sh` for each backend.
 *
 * `NETLOCK_BENCH_OTHER_HOOK=/path/to/criu-hook.sh` adds that hook (another
 * checkout's, say the last release's) for each backend, interleaved with
 * this one: a change is judged side by side, in one run.
 *
 * Needs root, python3 (the dumped process) and a CRIU that passes
 * `criu check`: `CRIU_BIN`, else `criu` on PATH. Without one it says why
 * and measures nothing. Run as a program it also runs bench/criu_host.ts
 * (a tree in CRIU's own namespace, at 200, 1,000 and 10,000 connections).
 *
 * @module
 */

import { median } from "./measure.ts";
import { criuStat, findCriu } from "./criu_stats.ts";
import { criuHostBench, printHostTable } from "./criu_host.ts";

const HOOK = new URL("../criu-hook.sh", import.meta.url).pathname;
const TARGET = `import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7001)); s.listen()
c = socket.create_connection(("127.0.0.1", 7001)); a, _ = s.accept()
while True:
    c.sendall(b"x"); a.recv(10); time.sleep(0.01)
`;

/** One way of locking the network during a dump and a restore. */
interface Method {
  name: string;
  args: string[];
  env?: Record<string, string>;
}

/** One row of the result: medians and every sample, in ms. */
export interface CriuRow {
  method: string;
  frozenMs: number;
  restoreMs: number;
  frozen: number[];
  restore: number[];
}

/**
 * Dumps and restores a process `rounds` times per method, interleaved.
 *
 * @param bin The CRIU binary.
 * @param rounds Rounds per method.
 * @returns One row per method.
 */
export async function criuHookBench(bin: string, rounds: number): Promise<CriuRow[]> {
  const noop = await Deno.makeTempFile({ suffix: ".sh" });
  await Deno.writeTextFile(noop, "#!/bin/sh\nexit 0\n");
  await Deno.chmod(noop, 0o755);
  const target = await Deno.makeTempFile({ suffix: ".py" });
  await Deno.writeTextFile(target, TARGET);
  const methods: Method[] = [
    { name: "CRIU --network-lock iptables", args: ["--network-lock", "iptables"] },
    { name: "CRIU --network-lock nftables", args: ["--network-lock", "nftables"] },
    { name: "skip (no lock)", args: ["--network-lock", "skip"] },
    {
      name: "skip + no-op action script",
      args: ["--network-lock", "skip", "--action-script", noop],
    },
    ...(["iptables", "nftables"] as const).map((backend) => ({
      name: `skip + criu-hook.sh (netlock ${backend})`,
      args: ["--network-lock", "skip", "--action-script", HOOK],
      env: { NETLOCK_BACKEND: backend },
    })),
    ...otherHookMethods(),
  ];
  const samples = new Map(
    methods.map((m) => [m.name, { frozen: [] as number[], restore: [] as number[] }]),
  );
  try {
    for (let round = 0; round < rounds; round++) {
      for (const method of methods) {
        const [frozen, restore] = await dumpAndRestore(bin, method, target);
        samples.get(method.name)!.frozen.push(frozen);
        samples.get(method.name)!.restore.push(restore);
      }
      console.error(`  criu round ${round + 1}/${rounds}`);
    }
  } finally {
    await Deno.remove(noop);
    await Deno.remove(target);
  }
  return methods.map(({ name }) => {
    const { frozen, restore } = samples.get(name)!;
    return { method: name, frozenMs: median(frozen), restoreMs: median(restore), frozen, restore };
  });
}

/** The methods of `NETLOCK_BENCH_OTHER_HOOK`, if it is set. */
function otherHookMethods(): Method[] {
  const other = Deno.env.get("NETLOCK_BENCH_OTHER_HOOK");
  if (!other) return [];
  return (["iptables", "nftables"] as const).map((backend) => ({
    name: `skip + ${other} (netlock ${backend})`,
    args: ["--network-lock", "skip", "--action-script", other],
    env: { NETLOCK_BACKEND: backend },
  }));
}

async function dumpAndRestore(
  bin: string,
  method: Method,
  target: string,
): Promise<[number, number]> {
  const images = await Deno.makeTempDir({ prefix: "netlock-criu-" });
  // The dump's root must lead its session; `unshare -n` gives it a namespace.
  const app = new Deno.Command("setsid", {
    args: ["unshare", "-n", "sh", "-c", `ip link set lo up && exec python3 ${target}`],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let restored: number | undefined;
  try {
    await waitForConnection(app.pid);
    const common = ["-D", images, "--tcp-established", ...method.args];
    await criu(
      bin,
      ["dump", "-t", String(app.pid), "--leave-running", "-o", "dump.log", ...common],
      method.env,
      images,
    );
    app.kill("SIGKILL");
    await app.status;
    // The PID stays taken for a few seconds after a process with TCP
    // sockets dies: retry while CRIU says so.
    for (let attempt = 0;; attempt++) {
      const result = await criu(
        bin,
        ["restore", "-d", "--pidfile", `${images}/pid`, "-o", "restore.log", ...common],
        method.env,
        images,
        true,
      );
      if (result === "ok") break;
      if (result !== "pid-taken" || attempt > 100) {
        throw new Error(`criu restore failed (${method.name}): see ${images}/restore.log`);
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    restored = Number((await Deno.readTextFile(`${images}/pid`)).trim());
    const [frozen, restore] = [await criuStat(images, "dump"), await criuStat(images, "restore")];
    await Deno.remove(images, { recursive: true });
    return [frozen, restore];
  } finally {
    try {
      app.kill("SIGKILL");
    } catch { /* gone */ }
    await app.status;
    if (restored) {
      try {
        Deno.kill(restored, "SIGKILL");
      } catch { /* gone */ }
    }
  }
}

async function criu(
  bin: string,
  args: string[],
  env: Record<string, string> | undefined,
  images: string,
  mayTakePid = false,
): Promise<"ok" | "pid-taken"> {
  const out = await new Deno.Command(bin, {
    args,
    env,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  })
    .output();
  if (out.success) return "ok";
  const log = await Deno.readTextFile(`${images}/${args[0]}.log`).catch(() => "");
  if (mayTakePid && /Can't fork for [0-9]+: File exists/.test(log)) return "pid-taken";
  throw new Error(
    `criu ${args[0]} failed: ${log.split("\n").filter((l) => /Error/.test(l)).at(-1)}`,
  );
}

async function waitForConnection(pid: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ss = await new Deno.Command("nsenter", {
      args: ["-t", String(pid), "-n", "ss", "-tnH", "state", "established"],
      stdout: "piped",
      stderr: "null",
    }).output();
    if (new TextDecoder().decode(ss.stdout).trim().split("\n").length >= 2) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error("the dumped process did not connect");
}

if (import.meta.main) {
  // deno task bench:criu [ROUNDS] [HOST_ROUNDS] [HOST_CONNECTIONS]   (10, 3, 200,1000)
  const rounds = Number(Deno.args[0] ?? "10");
  const hostRounds = Number(Deno.args[1] ?? "3");
  const counts = (Deno.args[2] ?? "200,1000,10000").split(",").map(Number);
  const found = await findCriu();
  if ("missing" in found) {
    console.log(`criu: skipped: ${found.missing}`);
    Deno.exit(0);
  }
  console.log("A tree in its own network namespace, one loopback connection:\n");
  printCriuTable(await criuHookBench(found.bin, rounds));
  if (hostRounds > 0) {
    console.log("\nA tree in CRIU's own namespace (the host), its children's connections:\n");
    printHostTable(await criuHostBench(hostRounds, counts));
  }
}

/** Prints the rows as a Markdown table, with netlock's ratios to CRIU's own lock. */
export function printCriuTable(rows: CriuRow[]): void {
  const by = (name: string) => rows.find((r) => r.method.startsWith(name))!;
  console.log("| method | frozen (dump --leave-running) | restore |");
  console.log("| --- | ---: | ---: |");
  for (const r of rows) {
    console.log(`| ${r.method} | ${r.frozenMs.toFixed(1)} ms | ${r.restoreMs.toFixed(1)} ms |`);
  }
  for (const backend of ["iptables", "nftables"]) {
    const ours = by(`skip + criu-hook.sh (netlock ${backend})`);
    const criu = by(`CRIU --network-lock ${backend}`);
    console.log(
      `${backend}: netlock / CRIU frozen ${(ours.frozenMs / criu.frozenMs).toFixed(2)}, ` +
        `restore ${(ours.restoreMs / criu.restoreMs).toFixed(2)}`,
    );
    const other = rows.find((r) => r !== ours && r.method.endsWith(`.sh (netlock ${backend})`));
    if (other) {
      console.log(
        `${backend}: this criu-hook.sh minus ${other.method}: frozen ` +
          `${(ours.frozenMs - other.frozenMs).toFixed(1)} ms, restore ` +
          `${(ours.restoreMs - other.restoreMs).toFixed(1)} ms`,
      );
    }
  }
}
