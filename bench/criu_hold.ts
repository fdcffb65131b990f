/**
 * What `NETLOCK_HOLD=1` saves the peers of a tree in a pod's namespace
 * dumped with `--leave-running` (issue 33): a tree whose children hold 6
 * connections to a peer in another namespace that sends on every one
 * every PAUSE ms; CRIU 4.2 dumps it with criu-hook.sh (iptables), holding or
 * dropping, rounds interleaved; CRIU's frozen_time beside the peer's
 * longest wait for an echo on any connection; medians.
 *
 *   CRIU_BIN=... deno run -A bench/criu_hold.ts [ROUNDS] [PAUSE_MS,...]   (default 10, 20,100)
 *
 * @module
 */

import { criuDump } from "../tests/helpers/criu.ts";
import { podTree } from "../tests/helpers/host_tree.ts";
import { criuStat, findCriu } from "./criu_stats.ts";
import { median } from "./measure.ts";

/** One dump: CRIU's frozen time and the peer's longest silence (ms). */
async function round(
  hold: boolean,
  pauseMs: number,
): Promise<{ frozen: number; silence: number }> {
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
  return { frozen, silence: verdict.maxSilenceMs };
}

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? "10");
  const pauses = (Deno.args[1] ?? "20,100").split(",").map(Number);
  const found = await findCriu();
  if ("missing" in found) {
    console.log(`criu: skipped: ${found.missing}`);
    Deno.exit(0);
  }
  type Sample = { frozen: number; silence: number };
  const samples = new Map<string, Sample[]>();
  const add = (key: string, sample: Sample) =>
    samples.set(key, [...samples.get(key) ?? [], sample]);
  for (let i = 0; i < rounds; i++) {
    console.error(`  round ${i + 1}/${rounds}`);
    for (const pause of pauses) {
      add(`${pause} drops`, await round(false, pause));
      add(`${pause} NETLOCK_HOLD=1`, await round(true, pause));
    }
  }
  console.log(
    "| the peer sends every | criu-hook.sh, iptables, dump --leave-running | frozen | peer's longest silence |",
  );
  console.log("| ---: | --- | ---: | ---: |");
  for (const [key, list] of samples) {
    const [pause, lock] = key.split(" ");
    const frozen = median(list.map((s) => s.frozen));
    const silence = median(list.map((s) => s.silence));
    console.log(`| ${pause} ms | ${lock} | ${frozen.toFixed(1)} ms | ${silence} ms |`);
  }
  console.log(`(${rounds} rounds, interleaved, medians; 6 connections)`);
}
