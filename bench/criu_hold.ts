/**
 * What `NETLOCK_HOLD=1` saves the peers of a tree dumped with
 * `--leave-running` (issue 33), in two settings, CRIU 4.2 with
 * criu-hook.sh (iptables), holding or dropping, rounds interleaved:
 *
 * - `pod`: a tree in a pod's namespace whose children hold 6 connections
 *   to a peer in another namespace that sends on every one every PAUSE ms;
 *   CRIU's frozen_time beside the peer's longest silence (the longest gap
 *   between echoes on any connection), for each pause;
 * - `host`: a tree that shares CRIU's namespace (a service on the host,
 *   which CRIU's network actions skip), its 4 children holding N
 *   connections to a peer in another namespace (across a veth pair) that
 *   sends 1 KiB on every one every 100 ms;
 *   CRIU's frozen_time beside the peer's waits for an echo (each
 *   connection's longest: their median and their maximum) and its longest
 *   silence, with no lock (`skip`), CRIU's nftables lock (CRIU's iptables
 *   lock takes seconds here: bench/criu_host.ts), and netlock dropping and
 *   holding. Images on a tmpfs.
 *
 * - `restore`: the same host tree, dumped for good and restored at once
 *   (retried while its PIDs are taken): the time from the freeze to the
 *   end of the restore beside the peer's waits.
 * - `pods`: as `host`, but the tree in a pod's namespace (CRIU in another,
 *   the pod's namespace external to the dump and outliving it);
 *   `pods-restore`: as `restore`, in the pod's namespace.
 *
 *   CRIU_BIN=... deno run -A bench/criu_hold.ts [ROUNDS] [pod|host|restore|pods|pods-restore] [PAUSES_MS|CONNECTIONS,...] [WORD,...]
 *   (default 5 rounds, every setting: pod at 20,100 ms, the others at 200,1000 connections;
 *   WORDs: only the locks whose name has one, e.g. `drops,holds`)
 *
 * @module
 */

import { createPod, criuDump, criuRestore, type Setting } from "../tests/helpers/criu.ts";
import { createNetns } from "../tests/helpers/netns.ts";
import { podTree } from "../tests/helpers/host_tree.ts";
import { startPeer, startTree } from "../tests/helpers/tree.ts";
import { criuStat, findCriu, imagesTmpfs } from "./criu_stats.ts";
import { median } from "./measure.ts";

/** One dump: CRIU's frozen time and what the peer saw (ms). */
interface Sample {
  frozen: number;
  silence: number;
  medianWait: number;
  maxWait: number;
  /** Dump and restore: the time from the freeze to the end of the restore (frozen + the gap). */
  down?: number;
  /** Dump and restore: CRIU's restore_time. */
  restore?: number;
}

/** One pod dump: CRIU's frozen time and the peer's longest silence (ms). */
async function podRound(hold: boolean, pauseMs: number): Promise<Sample> {
  await using live = await podTree(7800, pauseMs);
  const { pod, images, tree, peer } = live;
  const env = { NETLOCK_BACKEND: "iptables", NETLOCK_HOLD: hold ? "1" : "0" };
  // The silence before the dump is not the dump's: measured from here.
  await peer.flowing();
  const dump = await criuDump({ pod }, tree, images, ["--leave-running"], env);
  if (dump.code !== 0) throw new Error(`dump failed: ${dump.errors}`);
  const frozen = await criuStat(images, "dump");
  await peer.flowing();
  const verdict = await peer.stop();
  if (!verdict.ok) throw new Error(`the peer lost connections: ${verdict.errors.join("; ")}`);
  return {
    frozen,
    silence: verdict.maxSilenceMs,
    medianWait: verdict.medianWaitMs,
    maxWait: verdict.maxWaitMs,
  };
}

/** A way of locking a host tree's network for a `--leave-running` dump. */
interface HostMethod {
  name: string;
  lock?: string[];
  env?: Record<string, string>;
}

const HOST_METHODS: HostMethod[] = [
  { name: "skip (no lock)", lock: ["--network-lock", "skip"] },
  { name: "CRIU --network-lock nftables", lock: ["--network-lock", "nftables"] },
  { name: "netlock iptables, drops", env: { NETLOCK_BACKEND: "iptables", NETLOCK_HOLD: "0" } },
  { name: "netlock iptables, holds", env: { NETLOCK_BACKEND: "iptables", NETLOCK_HOLD: "1" } },
];

/**
 * One dump with `--leave-running` of a tree with `count` connections, or
 * (`restore`) a final dump and its restore, at once (retried while the
 * tree's PIDs are still taken, as users retry). `host`: the tree shares
 * CRIU's namespace; `pod`: the tree is in a pod's namespace, CRIU in
 * another (`--external net[...]`), its namespace outliving the dump.
 */
async function treeRound(
  method: HostMethod,
  count: number,
  under: string,
  where: "host" | "pod",
  restore = false,
): Promise<Sample> {
  // The tree's namespace and the peer's machine: two namespaces across a
  // veth pair (on loopback the verdict that lets held segments through also
  // pays for the peer's processing of the tree's answers).
  await using pod = await createPod(createNetns);
  const images = await Deno.makeTempDir({ prefix: "netlock-criu-hold-", dir: under });
  const at = { netns: pod.pod, address: pod.address };
  try {
    await using tree = await startTree(at, 7900, count, 4);
    await using peer = await startPeer(pod.peer, at, 7900, count, 100);
    await peer.flowing(count * 1024);
    const setting: Setting = {
      ...(where === "host" ? { host: pod.pod } : { pod }),
      ...(method.lock ? { lock: method.lock } : {}),
    };
    const env = method.env ?? {};
    if (restore) tree.members();
    const dump = await criuDump(setting, tree, images, restore ? [] : ["--leave-running"], env);
    const dumped = performance.now();
    if (dump.code !== 0) throw new Error(`${method.name}: dump failed: ${dump.errors}`);
    const frozen = await criuStat(images, "dump");
    let down: number | undefined;
    let restoreMs: number | undefined;
    if (restore) {
      await tree.gone();
      const restored = await criuRestore(setting, images, env);
      if (restored.code !== 0) {
        throw new Error(`${method.name}: restore failed: ${restored.errors}`);
      }
      down = frozen + performance.now() - dumped;
      restoreMs = await criuStat(images, "restore");
      tree.restored(restored.pid);
    }
    await peer.flowing(count * 1024);
    const verdict = await peer.stop();
    if (!verdict.ok) {
      throw new Error(`${method.name}: the peer lost connections: ${verdict.errors.join("; ")}`);
    }
    return {
      frozen,
      silence: verdict.maxSilenceMs,
      medianWait: verdict.medianWaitMs,
      maxWait: verdict.maxWaitMs,
      ...(down === undefined ? {} : { down, restore: restoreMs }),
    };
  } finally {
    await Deno.remove(images, { recursive: true });
  }
}

/** Prints one table row of medians. */
function row(first: string, method: string, list: Sample[]): string {
  const of = (key: keyof Sample) => median(list.map((s) => s[key] ?? NaN));
  // Each round's wait beyond its own freeze (or the time the tree was down).
  const beyond = median(list.map((s) => s.medianWait - (s.down ?? s.frozen)));
  const cells = [
    first,
    method,
    `${of("frozen").toFixed(1)} ms`,
    ...(list[0]?.down === undefined
      ? []
      : [`${of("restore").toFixed(1)} ms`, `${of("down").toFixed(0)} ms`]),
    `${of("medianWait")} ms`,
    `${beyond.toFixed(0)} ms`,
    `${of("maxWait")} ms`,
    `${of("silence")} ms`,
  ];
  return `| ${cells.join(" | ")} |`;
}

const HEADER = "| frozen | peer's wait for an echo, median over connections | " +
  "that wait beyond the same round's freeze (or down time) | its longest | " +
  "peer's longest silence |\n";

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? "5");
  const only = Deno.args[1];
  const found = await findCriu();
  if ("missing" in found) {
    console.log(`criu: skipped: ${found.missing}`);
    Deno.exit(0);
  }
  const words = Deno.args[3]?.split(",");
  const methods = HOST_METHODS.filter((method) =>
    words === undefined || words.some((word) => method.name.includes(word))
  );
  const add = (samples: Map<string, Sample[]>, key: string, sample: Sample) =>
    samples.set(key, [...samples.get(key) ?? [], sample]);
  if (only === undefined || only === "pod") {
    const pauses = (Deno.args[2] ?? "20,100").split(",").map(Number);
    const samples = new Map<string, Sample[]>();
    for (let i = 0; i < rounds; i++) {
      console.error(`  pod: round ${i + 1}/${rounds}`);
      for (const pause of pauses) {
        add(samples, `${pause} ms|drops`, await podRound(false, pause));
        add(samples, `${pause} ms|NETLOCK_HOLD=1`, await podRound(true, pause));
      }
    }
    console.log(
      "| a tree in a pod's namespace, 6 connections; the peer sends every | criu-hook.sh, " +
        "iptables, dump --leave-running " + HEADER +
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const [key, list] of samples) {
      console.log(row(...key.split("|") as [string, string], list));
    }
    console.log(`(${rounds} rounds, interleaved, medians)\n`);
  }
  const settings = [[false, "host"], [true, "host"], [false, "pod"], [true, "pod"]] as const;
  for (const [restore, where] of settings) {
    const setting = (where === "pod" ? ["pods", "pods-restore"] : ["host", "restore"])[+restore];
    if (only !== undefined && only !== setting) continue;
    const counts = (Deno.args[2] ?? "200,1000").split(",").map(Number);
    await using tmpfs = await imagesTmpfs();
    const samples = new Map<string, Sample[]>();
    const failures = new Map<string, string>();
    for (const count of counts) {
      for (let i = 0; i < rounds; i++) {
        console.error(`  ${setting} ${count} connections: round ${i + 1}`);
        // Every other round in reverse: no lock always follows the same one.
        for (const method of (i % 2 ? [...methods].reverse() : methods)) {
          const key = `${count}|${method.name}`;
          if (failures.has(key)) continue;
          await treeRound(method, count, tmpfs.path, where, restore).then(
            (sample) => {
              // Each round on stderr: single rounds spread widely on this machine.
              console.error(
                `    ${method.name}: frozen ${sample.frozen.toFixed(0)} ms, median wait ` +
                  `${sample.medianWait} ms (beyond ${
                    (sample.medianWait - (sample.down ?? sample.frozen)).toFixed(0)
                  })`,
              );
              add(samples, key, sample);
            },
            // CRIU's nftables lock cannot dump 1,000 connections here (RLIMIT_NOFILE);
            // without a lock a restore's peers are reset.
            (error) => failures.set(key, (error as Error).message.split("\n")[0].slice(0, 160)),
          );
        }
      }
    }
    console.log(
      restore
        ? `| a tree ${where === "pod" ? "in a pod's namespace" : "on the host"}, connections ` +
          "| dump, then restore | frozen | restore | " +
          "from the freeze to the end of the restore " + HEADER.slice(HEADER.indexOf("| peer")) +
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        : `| a tree ${where === "pod" ? "in a pod's namespace" : "on the host"}, connections ` +
          "| dump --leave-running " + HEADER +
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const [key, list] of samples) {
      console.log(row(...key.split("|") as [string, string], list));
    }
    for (const [key, why] of failures) console.log(`| ${key.replace("|", " | ")} | ${why} | | | |`);
    console.log(`(${rounds} rounds, interleaved, medians; the peer sends every 100 ms)\n`);
  }
}
