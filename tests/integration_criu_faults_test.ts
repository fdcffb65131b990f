/**
 * When a checkpoint goes wrong, with a real CRIU and criu-hook.sh: the one
 * rule of docs/criu.md. The dumped connections stay locked from the dump
 * until a restore succeeds, whatever fails in between, so a retry keeps
 * every connection; whatever locks more (a cgroup lock) goes once it is not
 * needed; a tree that runs on keeps nothing. And the safety net: the hook's
 * helper outlives CRIU's process group and any timer, the pre-dump lock
 * covers every socket of the tree, a dump whose restore plan cannot be
 * written fails, and two CRIUs never take each other's state.
 */
import assert from "node:assert/strict";
import {
  criuDump,
  criuRestore,
  holdPid,
  inCgroup,
  type Setting,
  withCriu,
  wrappedHook,
} from "./helpers/criu.ts";
import { createNetns, probe, sh, snapshot } from "./helpers/netns.ts";
import { lineReader } from "./helpers/lines.ts";
import { createCgroup, startPeer, startTree, type Tree } from "./helpers/tree.ts";
import {
  assertWhole,
  clean,
  CONNECTIONS,
  dumpedHostTree,
  hostTree,
  locks,
  podTree,
  PORT,
  restoresWhole,
  stalled,
} from "./helpers/host_tree.ts";

/** Waits (10 s at most) until no helper, watcher or state of criu-hook.sh is left. */
async function hookIdle(): Promise<string> {
  let left = "";
  for (let i = 0; i < 200; i++) {
    const state = await sh(["sh", "-c", "ls -d /run/netlock/criu-* 2>/dev/null"]);
    const processes = await sh(["pgrep", "-af", "hook/detached\\.sh|criu-hook --serve"]);
    left = (state.stdout + processes.stdout).trim();
    if (left === "") return "";
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return left;
}

const SECOND_PORT = 7710;

for (const backend of ["iptables", "nftables"]) {
  const env = { NETLOCK_BACKEND: backend };

  for (const holder of ["zombie", "live"] as const) {
    Deno.test({
      ...withCriu,
      name:
        `real CRIU, ${backend}: a restore that fails (PID held by a ${holder}) keeps every dumped connection locked, the cgroup talks, the retry restores them all`,
      async fn() {
        await using cgroup = await createCgroup();
        await using live = await dumpedHostTree(env, cgroup);
        const { host, images, tree, peer } = live;
        // What a final dump keeps: the dumped connections, and no cgroup lock.
        assert.ok(await hookIdle() === "", "the dump's helper ended");
        assert.deepEqual(await locks(host), [`connections NETLOCK-c${tree.pid}`]);
        {
          await using _held = await holdPid(tree.pid, holder);
          const failed = await criuRestore({ host }, images, env, true);
          assert.notEqual(failed.code, 0, "the PID is taken");
          assert.match(failed.errors, /File exists/);
          assert.equal(await hookIdle(), "", "the restore's watcher ended");
          // The dumped connections stay locked (no reset, no echo) ...
          assert.deepEqual(await locks(host), [`connections NETLOCK-c${tree.pid}`]);
          assert.ok(await stalled(peer), "no echo while the tree is not restored");
          // ... and a fallback in the tree's cgroup talks.
          const at = { netns: host, address: "127.0.0.1" };
          await using _fallback = await startTree(at, SECOND_PORT, 0, 0, cgroup);
          assert.equal(await probe(host, "127.0.0.1", SECOND_PORT), "ok", "the fallback answers");
        }
        await restoresWhole(live, env);
        assert.equal(await hookIdle(), "");
      },
    });
  }

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, ${backend}: a restore that fails after the tree was restored keeps the dumped connections locked; the retry restores them all`,
    async fn() {
      await using live = await dumpedHostTree(env);
      const { host, images, tree, peer } = live;
      // CRIU_FAULT=6 (FI_POST_RESTORE): the restore fails after the tree is
      // restored, before post-restore and the unlock; CRIU kills it again.
      const failed = await criuRestore({ host }, images, { ...env, CRIU_FAULT: "6" });
      assert.notEqual(failed.code, 0, "the restore failed");
      assert.equal(await hookIdle(), "", "the restore's watcher ended");
      assert.deepEqual(await locks(host), [`connections NETLOCK-c${tree.pid}`]);
      assert.ok(await stalled(peer), "no echo, no reset");
      await restoresWhole(live, env);
    },
  });

  // What a unit stop or timeout(1) does: CRIU killed with its whole process
  // group, or with its whole cgroup (cgroup.kill, CRIU run in a cgroup of
  // its own), whatever process group its children are in.
  for (const by of ["process group", "cgroup"] as const) {
    for (const at of ["network-lock", "post-dump"]) {
      Deno.test({
        ...withCriu,
        name:
          `real CRIU killed with its whole ${by} after ${at} of a --leave-running dump, tree in its own namespace, ${backend}: the helper unlocks the tree that runs on within 3 s, no helper left`,
        async fn() {
          await using live = await podTree();
          const { pod, images, before, tree, peer } = live;
          await using criuCgroup = await createCgroup();
          await using hook = await wrappedHook(
            by === "cgroup" ? { killAt: at, cgroup: criuCgroup.dir } : { killAt: at, group: true },
          );
          const setting: Setting = by === "cgroup"
            ? { pod, hook: hook.path, prefix: inCgroup(criuCgroup.dir) }
            : { pod, hook: hook.path, ownGroup: true };
          const dump = await criuDump(setting, tree, images, ["--leave-running"], env);
          const killed = performance.now();
          assert.notEqual(dump.code, 0, "CRIU was killed");
          assert.match((await hook.locks()).at(-1)!, new RegExp(`^${at} NETLOCK`), "locked then");
          assert.ok(await clean(pod.pod, before), "the namespace of the tree that runs on is free");
          const took = performance.now() - killed;
          assert.ok(took < 3000, `unlocked ${took.toFixed(0)} ms after CRIU was killed`);
          assert.equal(await hookIdle(), "", "no helper left");
          assert.ok(tree.thawed(), "the tree runs on (not frozen)");
          if (at === "network-lock") {
            await peer.flowing();
            assertWhole(await peer.stop());
          }
        },
      });
    }
  }

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, ${backend}: the dumped PID taken by another process before the helper looks keeps the dumped connections locked`,
    async fn() {
      await using live = await hostTree();
      const { host, images, tree, peer } = live;
      // The helper is held at post-dump, until the tree is gone and its
      // PID belongs to another process: then it decides whether the tree
      // runs on (it must not: that process is not the tree).
      await using hook = await wrappedHook({ stopHelperAt: "post-dump" });
      tree.members();
      const dump = await criuDump({ host, hook: hook.path }, tree, images, [], env);
      const helper = (await hook.locks()).find((line) => line.startsWith("stopped "))?.split(
        " ",
      )[1];
      try {
        assert.equal(dump.code, 0, dump.errors);
        assert.match(helper ?? "", /^[0-9]+$/, "the helper was stopped");
        await tree.gone();
        {
          await using _other = await holdPid(tree.pid, "live");
          await sh(["kill", "-CONT", helper!]);
          assert.equal(await hookIdle(), "", "the helper ended");
          assert.deepEqual(await locks(host), [`connections NETLOCK-c${tree.pid}`]);
          assert.ok(await stalled(peer), "the dumped connections stay locked (no reset)");
        }
      } finally {
        if (helper) await sh(["kill", "-CONT", helper]);
      }
      await restoresWhole(live, env);
    },
  });

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, ${backend}: a dump that outlasts the helper's old lifetime keeps its lock to the end`,
    async fn() {
      await using cgroup = await createCgroup();
      await using live = await hostTree(cgroup);
      const { host, images, tree, peer } = live;
      // The old helper gave up after its lifetime (here 1 s) and unlocked a
      // frozen tree; this dump takes 2 s more at post-dump.
      await using hook = await wrappedHook({ delay: ["post-dump", 2] });
      tree.members();
      const dump = await criuDump(
        { host, hook: hook.path },
        tree,
        images,
        [],
        { ...env, NETLOCK_HELPER_LIFETIME_MS: "1000" },
      );
      assert.equal(dump.code, 0, dump.errors);
      await tree.gone();
      assert.deepEqual((await hook.locks()).slice(0, 2).map((line) => line.split(" ")[0]), [
        "pre-dump",
        "post-dump",
      ]);
      assert.match((await hook.locks())[1], new RegExp(`NETLOCK-c${tree.pid}`));
      assert.equal(await hookIdle(), "");
      assert.deepEqual(await locks(host), [`connections NETLOCK-c${tree.pid}`]);
      assert.ok(await stalled(peer), "still locked after the dump");
      await restoresWhole(live, env);
    },
  });

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, ${backend}: connections accepted on a listener made in another cgroup lose no byte`,
    async fn() {
      // The tree makes its listener and accepts in cgroup A, then moves to
      // cgroup B, its own: its sockets stay A's, which a lock of B misses.
      await using first = await createCgroup();
      await using second = await createCgroup();
      await using live = await hostTree(first);
      const { host, images, tree, peer } = live;
      for (const pid of tree.members()) {
        await Deno.writeTextFile(`${second.dir}/cgroup.procs`, String(pid));
      }
      const dump = await criuDump({ host }, tree, images, [], env);
      assert.equal(dump.code, 0, dump.errors);
      await tree.gone();
      assert.ok(await stalled(peer), "locked while dumped");
      await restoresWhole(live, env);
      // Locked by connection from pre-dump on, and CRIU's log says why.
      assert.match(dump.log, /TCP sockets are not its cgroup's \(socket [0-9]+ belongs to cgroup/);
    },
  });

  Deno.test({
    ...withCriu,
    name:
      `real CRIU, ${backend}: a dump whose restore plan cannot be written fails with one line, the tree runs on unlocked`,
    async fn() {
      await using cgroup = await createCgroup();
      await using live = await hostTree(cgroup);
      const { host, images, before, tree, peer } = live;
      // A directory where the plan's script goes: writing it fails.
      await Deno.mkdir(`${images}/netlock-unlock.nft/in-the-way`, { recursive: true });
      const dump = await criuDump({ host }, tree, images, [], env);
      assert.notEqual(dump.code, 0, "the dump failed");
      const said = dump.log.split("\n").filter((line) => line.startsWith("error: "));
      assert.equal(said.length, 1, said.join("\n"));
      assert.match(
        said[0],
        new RegExp(`^error: criu-hook: cannot keep process ${tree.pid} locked for its restore: `),
      );
      assert.ok(await clean(host, before), "nothing of the lock is left");
      assert.equal(await hookIdle(), "");
      assert.ok(tree.thawed(), "the tree runs on (not frozen)");
      await peer.flowing();
      assertWhole(await peer.stop());
    },
  });
}

/** A PID namespace's init: it reaps every orphan, as a container's init does. */
const INIT = "import os, time\nprint('ready', flush=True)\nwhile True:\n" +
  "    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(0.05)\n";

/**
 * A PID namespace with /proc of its own (`unshare --pid --fork
 * --mount-proc`), entered with `enter`; everything in it is killed on
 * dispose (its init first).
 */
async function pidNamespace(): Promise<{ enter: string[]; pidns: string } & AsyncDisposable> {
  const child = new Deno.Command("unshare", {
    args: ["--pid", "--fork", "--mount-proc", "python3", "-c", INIT],
    stdin: "null",
    stdout: "piped",
    // (unshare complains on stderr when its namespace is killed.)
    stderr: "null",
  }).spawn();
  const output = lineReader(child.stdout);
  assert.equal(await output.next(), "ready");
  output.drain();
  const init = (await Deno.readTextFile(`/proc/${child.pid}/task/${child.pid}/children`)).trim();
  return {
    enter: ["nsenter", `--target=${init}`, "--pid", "--mount", "--"],
    pidns: await Deno.readLink(`/proc/${init}/ns/pid`),
    async [Symbol.asyncDispose]() {
      await sh(["kill", "-KILL", init]);
      await child.status;
      await output.drain();
    },
  };
}

/** Starts echo_tree.py in the PID namespace with root PID `pid` there, in `host`'s network. */
async function treeIn(
  ns: { enter: string[] },
  host: { path: string },
  pid: number,
  port: number,
): Promise<void> {
  // Nothing inherited but /dev/null from this namespace: CRIU dumps every open file.
  const start = 'echo $(($0 - 1)) >/proc/sys/kernel/ns_last_pid; nsenter --net="$1" -- ' +
    "setsid python3 -c 'import os, sys; os.closerange(3, 65536); os.execvp(sys.argv[1], sys.argv[1:])' " +
    'python3 "$2" 127.0.0.1 "$3" "$4" 1 </dev/null >/dev/null 2>&1 & echo $!';
  const started = await sh([
    ...ns.enter,
    "sh",
    "-c",
    start,
    String(pid),
    host.path,
    new URL("./helpers/echo_tree.py", import.meta.url).pathname,
    String(port),
    String(CONNECTIONS),
  ]);
  assert.equal(started.stdout.trim(), String(pid), started.stderr);
  for (let i = 0; i < 200; i++) {
    const ss = await sh(["nsenter", `--net=${host.path}`, "ss", "-tlnH", `sport = :${port}`]);
    if (ss.stdout.trim() !== "") return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`the tree in its PID namespace does not listen on ${port}`);
}

const GATE = new URL("./helpers/gate.sh", import.meta.url).pathname;

/**
 * Runs CRIU in the PID namespace with PID 200 there (ns_last_pid), whatever
 * ran before, held at `gate` (./helpers/gate.sh) once it has its PID.
 */
function criuAt200(ns: { enter: string[] }, gate: string): string[] {
  return [
    ...ns.enter,
    "sh",
    "-c",
    // (Not the last command: the shell forks it, as PID 200.)
    'echo 199 >/proc/sys/kernel/ns_last_pid; sh "$0" "$@"; exit $?',
    GATE,
    gate,
  ];
}

/**
 * Runs two CRIUs (`run(i, prefix)`), each PID 200 in its own PID
 * namespace, started in the same clock tick (same PID and start time: the
 * names of their state would collide without their PID namespace in them),
 * and released at once; a pair whose start times differ is stopped before
 * CRIU runs, and started again.
 */
async function sameTick<T>(
  namespaces: { enter: string[] }[],
  run: (i: number, prefix: string[]) => Promise<T>,
): Promise<{ runs: T[]; start: string }> {
  const dir = await Deno.makeTempDir({ prefix: "nltest-gate-" });
  try {
    for (let attempt = 0; attempt < 50; attempt++) {
      const gates = namespaces.map((_, i) => `${dir}/${attempt}-${i}`);
      for (const gate of gates) await sh(["mkfifo", gate]);
      const runs = namespaces.map((ns, i) => run(i, criuAt200(ns, gates[i])));
      let starts: string[] = [];
      for (let i = 0; i < 400 && starts.length < gates.length; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
        starts = (await Promise.all(
          gates.map((gate) => Deno.readTextFile(`${gate}.start`).catch(() => "")),
        )).map((text) => text.trim()).filter(Boolean);
      }
      const same = starts.length === gates.length && new Set(starts).size === 1;
      await Promise.all(gates.map((gate) => Deno.writeTextFile(gate, same ? "go\n" : "stop\n")));
      const done = await Promise.all(runs);
      if (same) return { runs: done, start: starts[0] };
    }
    throw new Error("no two CRIUs started in the same clock tick in 50 attempts");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

for (const backend of ["iptables", "nftables"]) {
  const env = { NETLOCK_BACKEND: backend };
  Deno.test({
    ...withCriu,
    name:
      `real CRIU, ${backend}: two host trees dumped and restored at once by two CRIUs with the same PID in their own PID namespaces keep every connection; stale state refuses nothing`,
    async fn() {
      await using host = await createNetns();
      const before = await snapshot(host);
      await using first = await pidNamespace();
      await using second = await pidNamespace();
      // What runs that were killed left: an older hook's directory, and a
      // helper directory and a watcher's marker of a CRIU 200 of the first
      // namespace that is gone (no helper or watcher lives).
      await Deno.mkdir("/run/netlock", { recursive: true, mode: 0o700 });
      for (const dir of ["/run/netlock/criu-200", "/run/netlock/criu-200-1.stale0"]) {
        await Deno.mkdir(dir, { recursive: true });
        await sh(["mkfifo", `${dir}/cmd`, `${dir}/reply`]);
        await Deno.writeTextFile(`${dir}/pid`, "4194300\n");
      }
      await Deno.writeTextFile("/run/netlock/criu-200-1.stale0/pidns", `${first.pidns}\n`);
      await Deno.writeTextFile("/run/netlock/criu-200-1-100.watch", `4194300 ${first.pidns}\n`);
      const trees = [{ ns: first, pid: 100, port: PORT }, {
        ns: second,
        pid: 150,
        port: SECOND_PORT,
      }];
      await using _images = {
        paths: await Promise.all(trees.map(() => Deno.makeTempDir({ prefix: "nltest-criu-" }))),
        async [Symbol.asyncDispose]() {
          for (const path of this.paths) await Deno.remove(path, { recursive: true });
        },
      };
      const images = _images.paths;
      const peers = [];
      for (const { ns, pid, port } of trees) {
        await treeIn(ns, host, pid, port);
        const peer = await startPeer(
          host,
          { netns: host, address: "127.0.0.1" },
          port,
          CONNECTIONS,
        );
        peers.push(peer);
      }
      try {
        for (const peer of peers) await peer.flowing();
        // Each CRIU is PID 200 in its namespace, both started in the same
        // clock tick: the hook notes the PID and start time it is given, and
        // how many restore watchers there are.
        await using hook = await wrappedHook({ notePid: true });
        const namespaces = trees.map(({ ns }) => ns);
        const dumped = await sameTick(
          namespaces,
          (i, prefix) =>
            criuDump(
              { host, hook: hook.path, prefix },
              { pid: trees[i].pid } as Tree,
              images[i],
              [],
              env,
            ),
        );
        for (const dump of dumped.runs) assert.equal(dump.code, 0, dump.errors);
        const notes = await hook.locks();
        assert.deepEqual(
          [...new Set(notes.map((line) => line.split(" ").slice(0, 2).join(" ")))],
          [`criu-pid=200 start=${dumped.start}`],
          "both CRIUs had PID 200 and the same start time",
        );
        // The two dumps overlapped: both pre-dumps before either post-dump.
        const actions = notes.map((line) => line.split(" ")[2]);
        assert.ok(
          actions.lastIndexOf("pre-dump") < actions.indexOf("post-dump"),
          `the dumps ran at once: ${actions.join(" ")}`,
        );
        assert.deepEqual((await locks(host)).sort(), [
          "connections NETLOCK-c100",
          "connections NETLOCK-c150",
        ]);
        for (const peer of peers) assert.ok(await stalled(peer), "locked while dumped");
        const noted = (await hook.locks()).length;
        const restored = await sameTick(
          namespaces,
          (i, prefix) => criuRestore({ host, hook: hook.path, prefix }, images[i], env, true),
        );
        for (const restore of restored.runs) assert.equal(restore.code, 0, restore.errors);
        // Each restore had its own watcher (same PID, same start time: one
        // marker's name for both, without the PID namespace in it).
        const watchers = (await hook.locks()).slice(noted).filter((line) =>
          / post-restore /.test(line)
        )
          .map((line) => Number(line.match(/watchers=([0-9]+)/)?.[1]));
        assert.ok(Math.max(...watchers) >= 2, `each restore watched: ${watchers}`);
        for (const peer of peers) await peer.flowing();
        assert.ok(
          await clean(host, before),
          `both restores removed their locks: ${await snapshot(host)}`,
        );
        for (const peer of peers) assertWhole(await peer.stop());
        assert.equal(
          await hookIdle(),
          "",
          "the stale state was swept, nothing of the runs is left",
        );
      } finally {
        for (const peer of peers) await peer[Symbol.asyncDispose]();
      }
    },
  });
}
