/**
 * criu-hook.sh, the file users pass to CRIU, driven as CRIU drives it: every
 * action from one parent process (CRIU), the environment CRIU sets, rules
 * checked between the actions. The warm helper it starts must end on its
 * own and leave nothing behind; without a helper, cli.ts does the work.
 */
import assert from "node:assert/strict";
import { createNetns, integration, sh, snapshot, startSleeper } from "./helpers/netns.ts";

const HOOK = new URL("../criu-hook.sh", import.meta.url).pathname;
const PATH = `${Deno.execPath().replace(/\/[^/]+$/, "")}:/usr/sbin:/usr/bin:/sbin:/bin`;

/**
 * Runs the actions from one `sh` (their common parent, as CRIU is), printing
 * `ACTION EXIT LOCKS` after each, where LOCKS counts netlock's jumps and
 * tables in the namespace. Also returns the parent's PID.
 */
async function asCriu(
  netnsPath: string,
  pid: number,
  actions: string[],
  env: Record<string, string>,
): Promise<{ steps: string[]; stderr: string; parent: number }> {
  const count = `{ nsenter --net=${netnsPath} iptables-save; nsenter --net=${netnsPath} ` +
    `ip6tables-save; nsenter --net=${netnsPath} nft list ruleset; } | ` +
    `grep -c -e '-j NETLOCK$' -e 'table inet NETLOCK'`;
  // "warm" while the helper's FIFOs are there (it answers), "-" otherwise.
  const warm = `{ test -p /run/netlock/criu-$$/cmd && echo warm || echo -; }`;
  const script = `echo parent $$; for a in ${actions.join(" ")}; do ` +
    `CRTOOLS_SCRIPT_ACTION=$a ${HOOK}; rc=$?; echo "$a $rc $(${count}) $(${warm})"; done`;
  const result = await sh([
    "env",
    "-i",
    `PATH=${PATH}`,
    `CRTOOLS_INIT_PID=${pid}`,
    ...Object
      .entries(env).map(([k, v]) => `${k}=${v}`),
    "sh",
    "-c",
    script,
  ]);
  assert.equal(result.code, 0, result.stderr);
  const lines = result.stdout.trim().split("\n");
  return { parent: Number(lines[0].split(" ")[1]), steps: lines.slice(1), stderr: result.stderr };
}

/** Drops the helper marker where it may or may not be there yet. */
function untilUnlock(step: string): string {
  return /^(network-unlock|pre-resume|post-resume|pre-dump 0 0 -)/.test(step)
    ? step.replace(/ (warm|-)$/, "")
    : step;
}

/** The helper's directory is gone once it ended (bounded wait). */
async function helperEnded(parent: number): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    const left = await sh(["sh", "-c", `ls -d /run/netlock/criu-${parent} /tmp/criu-${parent}`]);
    const helpers = await sh(["pgrep", "-f", `criu-hook --serve .*criu-${parent} `]);
    if (left.stdout.trim() === "" && helpers.code !== 0) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

for (const backend of ["iptables", "nftables"]) {
  const locks = backend === "iptables" ? 4 : 1; // two jumps per family, or one table

  Deno.test({
    ...integration,
    name: `criu-hook.sh, ${backend}: a dump's actions lock and unlock through the warm helper`,
    async fn() {
      await using netns = await createNetns();
      await using sleeper = startSleeper(netns);
      const before = await snapshot(netns);
      const run = await asCriu(
        netns.path,
        sleeper.pid,
        ["pre-dump", "network-lock", "post-dump", "network-unlock", "post-resume"],
        { NETLOCK_BACKEND: backend },
      );
      // After the unlock the helper removes the rest of the lock, then ends.
      assert.deepEqual(run.steps.map(untilUnlock), [
        "pre-dump 0 0 warm",
        `network-lock 0 ${locks} warm`,
        `post-dump 0 ${locks} warm`,
        "network-unlock 0 0",
        "post-resume 0 0",
      ]);
      assert.equal(run.stderr, "");
      assert.ok(await helperEnded(run.parent), "the helper ended and removed its directory");
      assert.equal(await snapshot(netns), before);
    },
  });

  Deno.test({
    ...integration,
    name: `criu-hook.sh, ${backend}: a restore's unlock is armed at setup-namespaces`,
    async fn() {
      await using netns = await createNetns();
      await using sleeper = startSleeper(netns);
      const before = await snapshot(netns);
      // The restored namespace holds the lock the dump's images carried.
      const lock = await sh(
        [
          Deno.execPath(),
          "run",
          "-A",
          new URL("../cli.ts", import.meta.url).pathname,
          "lock",
          "-b",
          backend,
          String(sleeper.pid),
        ],
      );
      assert.equal(lock.code, 0, lock.stderr);
      const run = await asCriu(netns.path, sleeper.pid, [
        "pre-restore",
        "setup-namespaces",
        "post-setup-namespaces",
        "post-restore",
        "network-unlock",
        "pre-resume",
        "post-resume",
      ], { NETLOCK_BACKEND: backend });
      assert.deepEqual(run.steps.map(untilUnlock), [
        `pre-restore 0 ${locks} warm`,
        `setup-namespaces 0 ${locks} warm`,
        `post-setup-namespaces 0 ${locks} warm`,
        `post-restore 0 ${locks} warm`,
        "network-unlock 0 0",
        "pre-resume 0 0",
        "post-resume 0 0",
      ]);
      assert.ok(await helperEnded(run.parent), "the helper ended and removed its directory");
      assert.equal(await snapshot(netns), before);
    },
  });
}

Deno.test({
  ...integration,
  name: "criu-hook.sh without its helper: cli.ts locks and unlocks, errors reach CRIU",
  async fn() {
    await using netns = await createNetns();
    await using sleeper = startSleeper(netns);
    const before = await snapshot(netns);
    const run = await asCriu(netns.path, sleeper.pid, ["network-lock", "network-unlock"], {});
    assert.deepEqual(run.steps, ["network-lock 0 4 -", "network-unlock 0 0 -"]);
    // A bad option: refused in one line, the exit code CRIU aborts on, nothing applied.
    const bad = await asCriu(netns.path, sleeper.pid, ["pre-dump", "network-lock"], {
      NETLOCK_MARK: "0x",
    });
    assert.deepEqual(bad.steps.map(untilUnlock), ["pre-dump 0 0", "network-lock 2 0 -"]);
    assert.match(bad.stderr, /^error: NETLOCK_MARK: /m);
    assert.ok(await helperEnded(bad.parent));
    assert.equal(await snapshot(netns), before);
  },
});
