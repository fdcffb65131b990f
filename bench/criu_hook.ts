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
 * Needs root, python3 (the dumped process) and a CRIU that passes
 * `criu check`: `CRIU_BIN`, else `criu` on PATH. Without one it says why
 * and measures nothing.
 *
 * @module
 */

import { median } from "./measure.ts";

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

/** The CRIU to measure with, or why there is none. */
export async function findCriu(): Promise<{ bin: string } | { missing: string }> {
  const bin = Deno.env.get("CRIU_BIN") ?? "criu";
  try {
    const check = await new Deno.Command(bin, { args: ["check"], stdout: "null", stderr: "piped" })
      .output();
    if (check.success) return { bin };
    const why = new TextDecoder().decode(check.stderr).trim().split("\n").at(-1);
    return { missing: `${bin} check failed: ${why}` };
  } catch {
    return { missing: `no CRIU: set CRIU_BIN or put criu on PATH (tried ${bin})` };
  }
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
    const frozen = readStat(await Deno.readFile(`${images}/stats-dump`), 1, 2);
    const restore = readStat(await Deno.readFile(`${images}/stats-restore`), 2, 4);
    await Deno.remove(images, { recursive: true });
    return [frozen / 1000, restore / 1000];
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

/** Reads one varint field of a message nested in CRIU's stats image. */
function readStat(image: Uint8Array, outer: number, inner: number): number {
  // Two magic numbers, then a 4-byte little-endian size, then stats_entry.
  const size = new DataView(image.buffer, image.byteOffset + 8, 4).getUint32(0, true);
  const entry = fields(image.subarray(12, 12 + size)).get(outer) as Uint8Array;
  return fields(entry).get(inner) as number;
}

function fields(bytes: Uint8Array): Map<number, number | Uint8Array> {
  const out = new Map<number, number | Uint8Array>();
  let i = 0;
  const varint = () => {
    let value = 0;
    let scale = 1;
    for (;;) {
      const byte = bytes[i++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
      if (byte < 0x80) return value;
    }
  };
  while (i < bytes.length) {
    const key = varint();
    if ((key & 7) === 0) out.set(key >> 3, varint());
    else if ((key & 7) === 2) {
      const length = varint();
      out.set(key >> 3, bytes.subarray(i, i + length));
      i += length;
    } else throw new Error(`unexpected protobuf wire type ${key & 7}`);
  }
  return out;
}

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? "10");
  const found = await findCriu();
  if ("missing" in found) {
    console.log(`criu: skipped: ${found.missing}`);
    Deno.exit(0);
  }
  const rows = await criuHookBench(found.bin, rounds);
  printCriuTable(rows);
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
  }
}
