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
 * Runs the actions from one `sh` (their common parent, as CRIU is), with the
 * environment CRIU gives: `CRTOOLS_IMAGE_DIR` as `/proc/CRIU/fd/N` (an open
 * descriptor of the image directory), `CRTOOLS_INIT_PID` once CRIU knows the
 * root's PID (a restore's `pre-restore` has none). Prints `ACTION EXIT LOCKS`
 * after each, where LOCKS counts what of netlock's lock drops traffic in the
 * namespace (the chain's DROP rule per family, or the table). The pseudo
 * action `await-armed` waits (5 s at most) for an armed unlock of the PID
 * (a tool started in its namespace, waiting for its input) and prints
 * `await-armed yes|no`. Also returns the parent's PID, and the actions that
 * started Deno.
 */
async function asCriu(
  netnsPath: string,
  pid: number,
  actions: string[],
  env: Record<string, string>,
  images: string,
): Promise<{ steps: string[]; stderr: string; parent: number; denoStarts: string[] }> {
  // A `deno` first on PATH that notes which action started it.
  const stub = await Deno.makeTempDir({ prefix: "nltest-deno-" });
  await Deno.writeTextFile(
    `${stub}/deno`,
    `#!/bin/sh\necho "$NLTEST_ACTION" >>${stub}/starts\nexec ${Deno.execPath()} "$@"\n`,
    { mode: 0o755 },
  );
  // The locks that stop traffic: per family, a jump to the chain and its
  // DROP rule, and no RETURN opening it; the nftables table, without the
  // accept that opens it (an opened lock is removed after CRIU's window).
  const dropping = (tool: string) =>
    `{ s=$(nsenter --net=${netnsPath} ${tool}); echo "$s" | grep -qx -- '-A NETLOCK -j RETURN' ` +
    `&& echo 0 || echo "$s" | grep -e '-j NETLOCK$' -e '^-A NETLOCK -j DROP$' | ` +
    `sort -u | wc -l | grep -c 3; }`;
  const nftDropping = `nsenter --net=${netnsPath} nft list table inet NETLOCK 2>/dev/null | ` +
    `grep -c -e 'chain input' -e '^[[:space:]]*accept$' | grep -c 1`;
  const count = `$(( $(${dropping("iptables-save")}) + $(${dropping("ip6tables-save")}) + ` +
    `$(${nftDropping}) ))`;
  // "warm" while the image directory points to a helper whose FIFOs are there, "-" otherwise.
  const warm = `{ d=; read -r d 2>/dev/null <"$CRTOOLS_IMAGE_DIR/netlock-helper"; ` +
    `test -p "$d/cmd" && echo warm || echo -; }`;
  // nsenter execs the tool: an armed one is `nft -f -` or `ip(6)tables-restore` in PID's namespace.
  const armed = `pgrep --ns ${pid} --nslist net -f "^(nft -f -|ip6?tables-restore -w --noflush)$"`;
  const awaitArmed = `n=0; until ${armed} >/dev/null; do n=$((n+1)); ` +
    `[ $n -gt 100 ] && break; sleep 0.05; done; ` +
    `${armed} >/dev/null && echo "await-armed yes" || echo "await-armed no"`;
  const script = `exec 9<"$NLTEST_IMAGES"; export CRTOOLS_IMAGE_DIR=/proc/$$/fd/9; ` +
    `echo parent $$; for a in ${actions.join(" ")}; do ` +
    `if [ $a = await-armed ]; then ${awaitArmed}; continue; fi; ` +
    `[ $a = pre-restore ] || export CRTOOLS_INIT_PID=$NLTEST_PID; ` +
    `CRTOOLS_SCRIPT_ACTION=$a NLTEST_ACTION=$a ${HOOK}; rc=$?; echo "$a $rc ${count} $(${warm})"; done`;
  const result = await sh([
    "env",
    "-i",
    `PATH=${stub}:${PATH}`,
    `NLTEST_PID=${pid}`,
    `NLTEST_IMAGES=${images}`,
    ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
    "sh",
    "-c",
    script,
  ]);
  assert.equal(result.code, 0, result.stderr);
  const lines = result.stdout.trim().split("\n");
  const starts = await Deno.readTextFile(`${stub}/starts`).catch(() => "");
  await Deno.remove(stub, { recursive: true });
  return {
    parent: Number(lines[0].split(" ")[1]),
    steps: lines.slice(1),
    stderr: result.stderr,
    denoStarts: starts.split("\n").filter(Boolean),
  };
}

/** A temporary image directory; removed on dispose. */
async function imageDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "nltest-images-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** A restore's actions, in CRIU's order. */
const RESTORE = [
  "pre-restore",
  "setup-namespaces",
  "post-setup-namespaces",
  "post-restore",
  "network-unlock",
  "pre-resume",
  "post-resume",
];

/** Drops the helper marker where it may or may not be there yet. */
function untilUnlock(step: string): string {
  return /^(network-unlock|pre-resume|post-resume|pre-dump 0 0 -)/.test(step)
    ? step.replace(/ (warm|-)$/, "")
    : step;
}

/** The helper's directory is gone once it ended (bounded wait). */
async function helperEnded(parent: number): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    // This CRIU's entries: criu-PID-START.* (directory, markers).
    const left = await sh([
      "sh",
      "-c",
      `ls -d /run/netlock/criu-${parent}-* /tmp/criu-${parent}-*`,
    ]);
    const helpers = await sh(["pgrep", "-f", `criu-hook --serve .*criu-${parent}-`]);
    if (left.stdout.trim() === "" && helpers.code !== 0) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

for (const backend of ["iptables", "nftables"]) {
  const locks = backend === "iptables" ? 2 : 1; // one DROP per family, or one table

  Deno.test({
    ...integration,
    name: `criu-hook.sh, ${backend}: a dump's actions lock and unlock through the warm helper`,
    async fn() {
      await using netns = await createNetns();
      await using sleeper = await startSleeper(netns);
      await using images = await imageDir();
      const before = await snapshot(netns);
      const run = await asCriu(
        netns.path,
        sleeper.pid,
        ["pre-dump", "network-lock", "post-dump", "network-unlock", "post-resume"],
        { NETLOCK_BACKEND: backend },
        images.path,
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
      assert.deepEqual(run.denoStarts, ["pre-dump"], "no Deno start inside the window");
      assert.ok(await helperEnded(run.parent), "the helper ended and removed its directory");
      assert.equal(await snapshot(netns), before);
    },
  });

  Deno.test({
    ...integration,
    name: `criu-hook.sh, ${backend}: a restore's unlock is armed at setup-namespaces`,
    async fn() {
      await using netns = await createNetns();
      await using sleeper = await startSleeper(netns);
      await using images = await imageDir();
      const before = await snapshot(netns);
      // The restored namespace holds the lock the dump's images carried (no plan beside them).
      await lockWith(backend, sleeper.pid);
      const actions = [...RESTORE.slice(0, 4), "await-armed", ...RESTORE.slice(4)];
      const run = await asCriu(
        netns.path,
        sleeper.pid,
        actions,
        { NETLOCK_BACKEND: backend },
        images.path,
      );
      assert.deepEqual(run.steps.map(untilUnlock), [
        `pre-restore 0 ${locks} warm`,
        `setup-namespaces 0 ${locks} warm`,
        `post-setup-namespaces 0 ${locks} warm`,
        `post-restore 0 ${locks} warm`,
        // The unlock's tools wait in the restored namespace before network-unlock asks.
        "await-armed yes",
        "network-unlock 0 0",
        "pre-resume 0 0",
        "post-resume 0 0",
      ]);
      assert.deepEqual(run.denoStarts, ["pre-restore"]);
      assert.ok(await helperEnded(run.parent), "the helper ended and removed its directory");
      assert.equal(await snapshot(netns), before);
    },
  });
}

for (const backend of ["iptables", "nftables"]) {
  const locks = backend === "iptables" ? 2 : 1;

  Deno.test({
    ...integration,
    name:
      `criu-hook.sh, ${backend}: a dump plans the restore's unlock, the restore starts no helper`,
    async fn() {
      await using netns = await createNetns();
      await using sleeper = await startSleeper(netns);
      await using dir = await imageDir();
      const images = dir.path;
      {
        const before = await snapshot(netns);
        const env = { NETLOCK_BACKEND: backend };
        const dump = await asCriu(
          netns.path,
          sleeper.pid,
          [
            "pre-dump",
            "network-lock",
            "post-dump",
            "network-unlock",
          ],
          env,
          images,
        );
        assert.deepEqual(dump.steps.map(untilUnlock), [
          "pre-dump 0 0 warm",
          `network-lock 0 ${locks} warm`,
          `post-dump 0 ${locks} warm`,
          "network-unlock 0 0",
        ]);
        assert.ok(await helperEnded(dump.parent));
        assert.deepEqual(dump.denoStarts, ["pre-dump"], "only the helper started Deno");
        const plan = await Deno.readTextFile(`${images}/netlock-unlock`);
        assert.equal(
          plan,
          `version=1\nkind=netns\nbackend=${backend}\npid=${sleeper.pid}\nfinish=1\n`,
        );

        // The restored namespace holds the lock the images carried.
        await lockWith(backend, sleeper.pid);
        const restore = await asCriu(netns.path, sleeper.pid, RESTORE, env, images);
        assert.deepEqual(restore.steps, [
          ...RESTORE.slice(0, 4).map((action) => `${action} 0 ${locks} -`),
          "network-unlock 0 0 -",
          "pre-resume 0 0 -",
          "post-resume 0 0 -",
        ]);
        assert.equal(restore.stderr, "");
        // No Deno inside the restore clock; post-resume removes the opened
        // lock (the namespace is then as it was).
        assert.deepEqual(restore.denoStarts, ["post-resume"]);
        assert.equal(await snapshot(netns), before);

        // A plan that no longer fits (nothing is locked): cli.ts decides, quietly.
        const stale = await asCriu(
          netns.path,
          sleeper.pid,
          ["network-unlock", "post-resume"],
          env,
          images,
        );
        assert.deepEqual(stale.steps, ["network-unlock 0 0 -", "post-resume 0 0 -"]);
        assert.deepEqual(stale.denoStarts, ["network-unlock"]);
        assert.equal(stale.stderr, "");
        assert.equal(await snapshot(netns), before);
        assert.deepEqual(await leftInRun(dump.parent, restore.parent, stale.parent), []);
      }
    },
  });
}

async function lockWith(backend: string, pid: number): Promise<void> {
  const cli = new URL("../cli.ts", import.meta.url).pathname;
  const lock = await sh([Deno.execPath(), "run", "-A", cli, "lock", "-b", backend, String(pid)]);
  assert.equal(lock.code, 0, lock.stderr);
}

/**
 * What the hook left in /run/netlock for these CRIU parents, once the
 * restore's watcher (which ends when its CRIU did) had 5 s to clean up.
 */
async function leftInRun(...parents: number[]): Promise<string[]> {
  let left: string[] = [];
  for (let i = 0; i < 100; i++) {
    left = [];
    try {
      for await (const entry of Deno.readDir("/run/netlock")) {
        if (parents.some((p) => entry.name.startsWith(`criu-${p}`))) left.push(entry.name);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    if (left.length === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return left;
}

Deno.test({
  ...integration,
  name: "criu-hook.sh without its helper: cli.ts locks and unlocks, errors reach CRIU",
  async fn() {
    await using netns = await createNetns();
    await using sleeper = await startSleeper(netns);
    await using images = await imageDir();
    const before = await snapshot(netns);
    const run = await asCriu(
      netns.path,
      sleeper.pid,
      ["network-lock", "network-unlock"],
      {},
      images.path,
    );
    assert.deepEqual(run.steps, ["network-lock 0 2 -", "network-unlock 0 0 -"]);
    // A bad option: refused in one line, the exit code CRIU aborts on, nothing applied.
    const bad = await asCriu(netns.path, sleeper.pid, ["pre-dump", "network-lock"], {
      NETLOCK_MARK: "0x",
    }, images.path);
    // Refused at pre-dump already (CRIU aborts before it freezes anything), and again after.
    assert.deepEqual(bad.steps.map(untilUnlock), ["pre-dump 2 0 -", "network-lock 2 0 -"]);
    assert.match(bad.stderr, /^error: NETLOCK_MARK: /m);
    assert.ok(await helperEnded(bad.parent));
    assert.equal(await snapshot(netns), before);
    // NETLOCK_HOLD takes 1 or 0: another value is refused at pre-dump, before any helper.
    const hold = await asCriu(netns.path, sleeper.pid, ["pre-dump"], {
      NETLOCK_HOLD: "yes",
    }, images.path);
    assert.deepEqual(hold.steps.map(untilUnlock), ["pre-dump 2 0 -"]);
    assert.equal(
      hold.stderr,
      "error: NETLOCK_HOLD=yes: 1 holds what the lock stops, 0 (or unset) drops it\n",
    );
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "criu-hook.sh without CRIU's image directory writes nothing where it was started",
  async fn() {
    await using netns = await createNetns();
    await using sleeper = await startSleeper(netns);
    await using cwd = await imageDir();
    const hook = (action: string) =>
      sh([
        "env",
        "-i",
        `PATH=${PATH}`,
        `CRTOOLS_SCRIPT_ACTION=${action}`,
        `CRTOOLS_INIT_PID=${sleeper.pid}`,
        "sh",
        "-c",
        `cd ${cwd.path} && ${HOOK}; echo rc=$?`,
      ]);
    const steps = [];
    for (const action of ["pre-dump", "network-lock", "network-unlock"]) {
      steps.push((await hook(action)).stdout.trim());
    }
    assert.deepEqual(steps, ["rc=0", "rc=0", "rc=0"]);
    assert.deepEqual(
      await Array.fromAsync(Deno.readDir(cwd.path)),
      [],
      "no restore plan in the working directory",
    );
  },
});
