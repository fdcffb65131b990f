/**
 * `deno task stress`: what must not fail one run in twenty, run many times.
 *
 *   deno run -A scripts/stress.ts [ROUNDS]      (default 20)
 *
 * First the concurrency, fault and stream suites once, with STRESS_ROUNDS=60
 * rounds inside their tests; then ROUNDS whole runs of each suite that
 * drives real processes from the outside and reads them: the process-lock
 * suite, the real-CRIU fault tests (the CRIU hook's faults), the
 * holder's (timed against the kernel), the CRIU hook's holding (timed
 * against a real CRIU) and a pod's tree under a real CRIU.
 * Stops at the first failure and shows its output; prints one
 * `N passed, M failed` line per run and a total at the end.
 */

// (`deno task stress -- N` passes the `--` along.)
const ROUNDS = Number(Deno.args.filter((arg) => arg !== "--")[0] ?? "20");
const ONCE = [
  "tests/integration_concurrency_test.ts",
  "tests/integration_faults_test.ts",
  "tests/integration_stream_test.ts",
];
const REPEATED = [
  "tests/integration_process_locks_test.ts",
  "tests/integration_criu_faults_test.ts",
  // Timed: a held SYN connects within 100 ms of the release.
  "tests/integration_hold_test.ts",
  // Timed too, with a real CRIU: a held SYN connects once the tree runs.
  "tests/integration_criu_hold_test.ts",
  // Real CRIU, a tree in a pod's namespace: held through network-unlock and
  // across a final dump until the restore.
  "tests/integration_criu_real_test.ts",
  // Real CRIU between two hosts: the peers' silence, the control's resets.
  "tests/integration_criu_migration_test.ts",
];

let passed = 0;
let failed = 0;

/** Runs `deno test` on the files; true when it passed. */
async function run(files: string[], label: string, env: Record<string, string> = {}) {
  const started = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["test", "--allow-all", ...files],
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  const summary = /^(?:ok|FAILED) \| ([0-9]+) passed(?: \([0-9]+ steps?\))? \| ([0-9]+) failed/m
    .exec(text);
  const [p, f] = summary ? [Number(summary[1]), Number(summary[2])] : [0, 1];
  passed += p;
  failed += f;
  const seconds = ((performance.now() - started) / 1000).toFixed(0);
  console.log(`${label}: ${p} passed, ${f} failed (${seconds} s)`);
  if (!out.success || f > 0 || !summary) {
    console.log(text.slice(text.indexOf(" ERRORS ") >= 0 ? text.indexOf(" ERRORS ") : 0));
    return false;
  }
  return true;
}

let ok = await run(ONCE, "concurrency, faults, streams (60 rounds inside)", {
  STRESS_ROUNDS: "60",
});
for (let round = 1; ok && round <= ROUNDS; round++) {
  for (const file of REPEATED) {
    ok = await run([file], `round ${round}/${ROUNDS} ${file}`);
    if (!ok) break;
  }
}
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(ok ? 0 : 1);
