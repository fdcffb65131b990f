/**
 * Live migration's outage as the peer sees it (docs/migration.md): a tree
 * on host A (a network namespace) whose four children hold N connections
 * to a peer on another, which sends on every one all along, moved to host
 * B (a third) with a real CRIU, memory through `criu page-server` on B:
 *
 * - `netlock iptables`, `netlock nftables`: the walk-through's commands
 *   (tests/helpers/hosts.ts `STEPS`, the migration test's), criu-hook.sh
 *   as the lock, `netlock lock --images` on B before the address moves;
 * - `CRIU iptables`: CRIU's own lock (`--network-lock iptables`), its
 *   rules copied from A to B by hand (`iptables-save` there,
 *   `iptables-restore --noflush` here) before the address moves, as
 *   CRIU's documentation asks of a migration.
 *
 * Per round: each connection's longest wait for an echo (median over
 * connections, and the longest of all), the time from the dump's start to
 * the restore's end, and whether any connection broke. Rounds interleaved,
 * medians over rounds; images on a tmpfs of their own.
 *
 *   CRIU_BIN=... deno run -A bench/criu_migrate.ts [ROUNDS] [CONNECTIONS,...]   (3, 200,1000)
 *
 * Needs root, python3, arping and a CRIU; without a CRIU it says why and
 * measures nothing.
 *
 * @module
 */

import {
  createHosts,
  type Hosts,
  retriedWhilePidsTaken,
  runStep,
  STEPS,
  stopPageServer,
  walkthrough,
} from "../tests/helpers/hosts.ts";
import type { TestNetns } from "../tests/helpers/netns.ts";
import { startPeer, startTree } from "../tests/helpers/tree.ts";
import { findCriu, imagesTmpfs } from "./criu_stats.ts";
import { median } from "./measure.ts";

const METHODS = ["netlock iptables", "netlock nftables", "CRIU iptables"] as const;
type Method = typeof METHODS[number];
const PORT = 7910;

/** One round: the peer's waits, the migration's length, or what broke. */
interface Sample {
  medianWait: number;
  maxWait: number;
  migrationMs: number;
  failure?: string;
}

/** CRIU's own lock in place of the hook, in a line of the walk-through. */
function criuLock(line: string): string {
  return line.replace(
    "--network-lock skip --action-script $NETLOCK/criu-hook.sh",
    "--network-lock iptables",
  );
}

async function round(method: Method, count: number, under: string): Promise<Sample> {
  await using hosts = await createHosts();
  const images = await Deno.makeTempDir({ prefix: "netlock-migrate-", dir: under });
  const imagesB = `${images}-b`;
  try {
    const at = { netns: hosts.a, address: hosts.address };
    await using tree = await startTree(at, PORT, count, 4);
    await using peer = await startPeer(hosts.peer, at, PORT, count, 100);
    await peer.flowing(count * 1024);
    const backend = method === "netlock nftables" ? "nftables" : "iptables";
    const own = method === "CRIU iptables";
    const { expand } = walkthrough(hosts, tree.pid, images, imagesB, backend);
    const env = { PATH: Deno.env.get("PATH")!, NETLOCK_BACKEND: backend };
    const attempt = (host: TestNetns | undefined, step: keyof typeof STEPS) =>
      runStep(host, expand(own ? criuLock(STEPS[step]) : STEPS[step]), env);
    const succeeded = (step: string, result: { code: number; out: string }) => {
      if (result.code !== 0) {
        throw new Error(`${method}: ${step} exited with ${result.code}: ${lastLines(result.out)}`);
      }
    };
    const run = async (host: TestNetns | undefined, step: keyof typeof STEPS) =>
      succeeded(step, await attempt(host, step));
    await run(hosts.b, "imagesB");
    await run(hosts.b, "pageServer");
    tree.members();
    const start = performance.now();
    await run(hosts.a, "dump");
    await run(undefined, "copy");
    if (own) await copyRules(hosts);
    else await run(hosts.b, "lockB");
    await run(hosts.a, "dropAddress");
    await run(hosts.b, "addAddress");
    await run(hosts.b, "announce");
    await tree.gone();
    succeeded("restore", await retriedWhilePidsTaken(() => attempt(hosts.b, "restore")));
    const migrationMs = performance.now() - start;
    tree.restored(tree.pid);
    const verdict = await peer.stop();
    if (own) {
      await hosts.a.run([
        "sh",
        "-c",
        "iptables -F INPUT; iptables -F OUTPUT; ip6tables -F INPUT; ip6tables -F OUTPUT",
      ]);
    } else await run(hosts.a, "unlockA");
    return {
      medianWait: verdict.medianWaitMs,
      maxWait: verdict.maxWaitMs,
      migrationMs,
      ...(verdict.ok ? {} : { failure: `${verdict.resets} reset(s): ${verdict.errors[0] ?? ""}` }),
    };
  } finally {
    await stopPageServer(imagesB);
    await Deno.remove(images, { recursive: true }).catch(() => {});
    await Deno.remove(imagesB, { recursive: true }).catch(() => {});
  }
}

/** CRIU's rules on A, copied to B by hand (both families). */
async function copyRules(hosts: Hosts): Promise<void> {
  for (const family of ["iptables", "ip6tables"]) {
    const saved = await hosts.a.run([`${family}-save`, "-t", "filter"]);
    const child = new Deno.Command("nsenter", {
      args: [`--net=${hosts.b.path}`, "--", `${family}-restore`, "--noflush"],
      stdin: "piped",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    const [, output] = await Promise.all([
      writer.write(new TextEncoder().encode(saved.stdout)).then(() => writer.close()),
      child.output(),
    ]);
    if (!output.success) {
      throw new Error(`${family}-restore on B: ${new TextDecoder().decode(output.stderr)}`);
    }
  }
}

function lastLines(out: string): string {
  return out.split("\n").filter((line) => /Error|error/.test(line)).slice(-3).join(" / ");
}

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? "3");
  const counts = (Deno.args[1] ?? "200,1000").split(",").map(Number);
  const found = await findCriu();
  if ("missing" in found) {
    console.log(`criu: skipped: ${found.missing}`);
    Deno.exit(0);
  }
  await using tmpfs = await imagesTmpfs();
  const samples = new Map<string, Sample[]>();
  for (let i = 0; i < rounds; i++) {
    for (const count of counts) {
      console.error(`  migration, ${count} connections: round ${i + 1}/${rounds}`);
      for (const method of METHODS) {
        const key = `${count}|${method}`;
        let sample: Sample;
        try {
          sample = await round(method, count, tmpfs.path);
        } catch (error) {
          sample = {
            medianWait: NaN,
            maxWait: NaN,
            migrationMs: NaN,
            failure: (error as Error).message.slice(0, 160),
          };
        }
        console.error(
          `    ${method}: ${
            sample.failure ?? `wait ${sample.medianWait} ms, longest ${sample.maxWait} ms`
          }`,
        );
        samples.set(key, [...samples.get(key) ?? [], sample]);
      }
    }
  }
  console.log(
    "| connections | method | peer's wait for an echo, median over connections | its longest | " +
      "dump start to restore end | connections broken |\n| ---: | --- | ---: | ---: | ---: | --- |",
  );
  for (const [key, list] of samples) {
    const [count, method] = key.split("|");
    const ok = list.filter((s) => s.failure === undefined);
    const of = (field: "medianWait" | "maxWait" | "migrationMs") =>
      ok.length ? `${median(ok.map((s) => s[field])).toFixed(0)} ms` : "-";
    const broken = list.filter((s) => s.failure !== undefined);
    console.log(
      `| ${count} | ${method} | ${of("medianWait")} | ${of("maxWait")} | ${of("migrationMs")} | ${
        broken.length ? `${broken.length} of ${list.length} rounds: ${broken[0].failure}` : "none"
      } |`,
    );
  }
  console.log(`(${rounds} rounds, interleaved, medians of the rounds without a break)`);
}
