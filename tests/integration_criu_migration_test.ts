/**
 * Live migration of a tree on the host's network, with a real CRIU, as
 * docs/migration.md walks it: two "hosts" (network namespaces A and B) and
 * a peer's namespace joined by a bridge in a fourth; a tree on host A whose
 * children hold connections from the service address to the peer, which
 * sends on every one all along. The final dump on A with criu-hook.sh, its
 * memory sent to `criu page-server` on B (whose own connection is never
 * locked), the other images copied, `netlock lock --images` on B, the address moved (with a
 * gratuitous ARP), the restore on B with criu-hook.sh, `netlock unlock
 * --images` on A: every connection kept with every byte echoed in order,
 * nothing left on A or B; a restore on B that fails keeps B's lock and
 * its retry keeps every connection. The negative control (no `lock
 * --images` on B) loses connections: B's kernel resets them before the
 * restore's hook locks what the dump took (at pre-restore), which CRIU's
 * log says. A tree in a network namespace of its own, with a veth: the
 * namespace comes back on B locked (CRIU restores its rules, netlock's lock
 * among them, before its veth joins B's bridge) until network-unlock.
 * Each command is one of docs/migration.md's, checked word for word.
 */
import assert from "node:assert/strict";
import { criuBin, helpersGone, holdPid, HOOK, withCriu, wrappedHook } from "./helpers/criu.ts";
import {
  cli,
  createNetns,
  integration,
  must,
  sh,
  snapshot,
  type TestNetns,
  vethPair,
} from "./helpers/netns.ts";
import {
  createHosts,
  retriedWhilePidsTaken,
  runStep,
  STEPS,
  stopPageServer,
  walkthrough,
} from "./helpers/hosts.ts";
import { startPeer, startTree } from "./helpers/tree.ts";
import { assertWhole, clean, locks, stalled } from "./helpers/host_tree.ts";

const PORT = 7710;
const CONNECTIONS = 6;
const CHILDREN = 2;
const WALKTHROUGH = new URL("../docs/migration.md", import.meta.url).pathname;

Deno.test("docs/migration.md holds every command the migration test runs", async () => {
  const text = await Deno.readTextFile(WALKTHROUGH);
  for (const [step, line] of Object.entries(STEPS)) {
    assert.ok(text.includes(line), `${step}: ${line}`);
  }
});

Deno.test({
  ...integration,
  name: "lock --images refuses a directory that holds no CRIU dump, in one line, changing nothing",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nltest-images-" });
    try {
      await Deno.writeTextFile(`${dir}/pstree.img`, "not an image");
      await Deno.writeTextFile(`${dir}/files.img`, "not an image");
      for (
        const [args, why] of [
          [
            ["lock", "--images", `${dir}/none`],
            `${dir}/none/pstree.img: No such file or directory`,
          ],
          [["unlock", "--images", dir], "not a CRIU files.img"],
        ]
      ) {
        const result = await cli(args as string[]);
        assert.equal(result.code, 1, result.stderr);
        assert.equal(result.stdout, "");
        const lines = result.stderr.split("\n").filter(Boolean);
        assert.equal(lines.length, 1, result.stderr);
        assert.match(lines[0], /^error: Cannot (un)?lock network of netlock's own namespace: /);
        assert.ok(lines[0].includes(why as string), lines[0]);
      }
      const json = await cli(["lock", "--json", "--images", dir]);
      assert.equal(JSON.parse(json.stdout).error.code, "INVALID_IMAGES");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

const NAMES = {
  kept: "every connection kept, nothing left on A or B",
  preDump: "a pre-dump round first (where the kernel cannot, its failure leaves nothing), " +
    "every connection kept",
  retry: "a restore on B that fails keeps B's lock, and its retry keeps every connection",
  control: "without lock --images on B the moved address resets connections (the control)",
};

for (const backend of ["iptables", "nftables"] as const) {
  for (const variant of ["kept", "preDump", "retry", "control"] as const) {
    const control = variant === "control";
    Deno.test({
      ...withCriu,
      name: `real CRIU, migration of a tree on the host's network, ${backend}: ${NAMES[variant]}`,
      async fn() {
        await using hosts = await createHosts();
        const [beforeA, beforeB] = [await snapshot(hosts.a), await snapshot(hosts.b)];
        const images = await Deno.makeTempDir({ prefix: "nltest-migrate-a-" });
        const imagesB = `${images}-b`;
        try {
          const at = { netns: hosts.a, address: hosts.address };
          await using tree = await startTree(at, PORT, CONNECTIONS, CHILDREN);
          await using peer = await startPeer(hosts.peer, at, PORT, CONNECTIONS);
          await peer.flowing();
          const env = { PATH: Deno.env.get("PATH")!, NETLOCK_BACKEND: backend };
          const { expand } = walkthrough(hosts, tree.pid, images, imagesB, backend);
          const run = (host: TestNetns, step: keyof typeof STEPS) =>
            runStep(host, expand(STEPS[step]), env);
          // B's page server takes the memory; A's dump keeps the rest of the images.
          for (const step of ["imagesB", "pageServer"] as const) {
            const started = await run(hosts.b, step);
            assert.equal(started.code, 0, started.out);
          }
          let dumpStep: "dump" | "dumpAfterPreDump" = "dump";
          if (variant === "preDump") {
            assert.equal((await run(hosts.a, "preDumpDir")).code, 0);
            const pre = await run(hosts.a, "preDump");
            if (await dirtyTracking()) {
              assert.equal(pre.code, 0, errorLines(pre.out));
              dumpStep = "dumpAfterPreDump";
            } else {
              // This kernel has no soft-dirty bits: CRIU stops at its own assertion.
              assert.notEqual(pre.code, 0);
              assert.match(pre.out, /BUG at criu\/mem\.c/);
            }
            // Either way the tree ran on: nothing of netlock's stays, no connection broke.
            assert.ok(await clean(hosts.a, beforeA), "a pre-dump round leaves no lock");
            assert.ok(await helpersGone(), "nor a helper");
            await peer.flowing();
            assert.equal(peer.broken(), 0);
          }
          tree.members();
          const dump = await run(hosts.a, dumpStep);
          assert.equal(dump.code, 0, dump.out);
          await tree.gone();
          assert.ok(await stalled(peer), "A keeps the dumped connections locked");
          assert.equal((await runStep(undefined, expand(STEPS.copy), env)).code, 0);
          if (!control) {
            const locked = await run(hosts.b, "lockB");
            assert.equal(locked.code, 0, locked.out);
            assert.deepEqual(await locks(hosts.b), [`connections NETLOCK-c${tree.pid}`]);
            // Idempotent.
            assert.equal((await run(hosts.b, "lockB")).code, 0);
          }
          for (const [host, step] of [[hosts.a, "dropAddress"], [hosts.b, "addAddress"]] as const) {
            const moved = await run(host, step);
            assert.equal(moved.code, 0, moved.out);
          }
          const announced = await run(hosts.b, "announce");
          assert.equal(announced.code, 0, announced.out);
          // The peer's segments now reach B before the tree is back there.
          await new Promise((resolve) => setTimeout(resolve, 300));
          if (variant === "retry") {
            // The dumped root's PID taken: the restore fails, B's lock stays.
            await using _held = await holdPid(tree.pid, "live");
            const failed = await run(hosts.b, "restore");
            assert.notEqual(failed.code, 0, "the restore failed");
            assert.deepEqual(await locks(hosts.b), [`connections NETLOCK-c${tree.pid}`]);
            assert.ok(await stalled(peer), "the peers wait (no reset) for the retry");
          }
          const restored = await retriedWhilePidsTaken(() => run(hosts.b, "restore"));
          assert.equal(restored.code, 0, errorLines(restored.out));
          // CRIU gives the tree its PIDs back.
          tree.restored(tree.pid);
          if (control) {
            const verdict = await peer.stop();
            assert.ok(
              verdict.resets > 0 || !verdict.ok,
              "B reset connections it had no socket for",
            );
            // The restore's hook locked them at pre-restore, said so, and unlocked them.
            assert.match(restored.out, /the dump ran elsewhere .* answered with resets/);
            assert.ok(await clean(hosts.b, beforeB), "nothing left on B");
            return;
          }
          assert.doesNotMatch(restored.out, /the dump ran elsewhere/, "lock --images locked first");
          await peer.flowing();
          const unlocked = await run(hosts.a, "unlockA");
          assert.equal(unlocked.code, 0, unlocked.out);
          assert.ok(await clean(hosts.b, beforeB), "nothing left on B");
          assert.ok(await clean(hosts.a, beforeA), "nothing left on A");
          assertWhole(await peer.stop());
          assert.ok(await helpersGone(), "no helper left");
        } finally {
          await stopPageServer(imagesB);
          for (const dir of [images, imagesB, `${images}-pre`]) {
            await Deno.remove(dir, { recursive: true }).catch(() => {});
          }
        }
      },
    });
  }
}

/** Whether the kernel tracks dirty memory (soft-dirty bits): what CRIU's pre-dump needs. */
async function dirtyTracking(): Promise<boolean> {
  const check = await new Deno.Command(criuBin(), {
    args: ["check", "--feature", "mem_dirty_track"],
    stdout: "null",
    stderr: "null",
  }).output();
  return check.success;
}

/** The lines of CRIU's output (its log, on stderr) that say what went wrong. */
function errorLines(out: string): string {
  return out.split("\n").filter((line) => /Error|error: |netlock/.test(line)).slice(-8).join("\n");
}

for (const backend of ["iptables", "nftables"] as const) {
  Deno.test({
    ...withCriu,
    name: `real CRIU, migration of a tree in its own network namespace with a veth, ${backend}: ` +
      "the namespace comes back on B locked until network-unlock, every connection kept",
    async fn() {
      await using hosts = await createHosts(true);
      await using hook = await wrappedHook();
      const images = await Deno.makeTempDir({ prefix: "nltest-migrate-a-" });
      const imagesB = `${images}-b`;
      // The container: a namespace of its own on A's LAN through a veth in A's br0.
      const container = await createNetns();
      const outer = `nlv${Deno.pid % 10000}${backend[0]}`;
      const ip = `${hosts.subnet}.20`;
      try {
        await vethPair("eth0", container.name, outer, hosts.a.name);
        await must(["ip", "-n", hosts.a.name, "link", "set", outer, "master", "br0", "up"]);
        await must(["ip", "-n", container.name, "addr", "add", `${ip}/24`, "dev", "eth0"]);
        await must(["ip", "-n", container.name, "link", "set", "eth0", "up"]);
        const at = { netns: container, address: ip };
        await using tree = await startTree(at, PORT, CONNECTIONS, CHILDREN);
        await using peer = await startPeer(hosts.peer, at, PORT, CONNECTIONS);
        await peer.flowing();
        const env = { PATH: Deno.env.get("PATH")!, NETLOCK_BACKEND: backend };
        const { expand } = walkthrough(hosts, tree.pid, images, imagesB, backend, {
          VETH_PAIR: `veth[eth0]:${outer}@br0`,
          CONTAINER_IP: ip,
        });
        // The walk-through's lines, the hook wrapped to see the locks after each action.
        const run = (host: TestNetns | undefined, step: keyof typeof STEPS) =>
          runStep(
            host,
            expand(STEPS[step]).map((arg) => arg === HOOK ? hook.path : arg),
            env,
          );
        for (const step of ["imagesB", "pageServer"] as const) {
          const started = await run(hosts.b, step);
          assert.equal(started.code, 0, started.out);
        }
        tree.members();
        const dump = await run(hosts.a, "dump");
        assert.equal(dump.code, 0, dump.out);
        await tree.gone();
        // The namespace stays locked on A after the final dump (the test holds
        // it; a container's dies with its tree): its veth goes, as it would.
        assert.deepEqual(await locks(container), ["netns NETLOCK"]);
        await must(["ip", "-n", container.name, "link", "del", "eth0"]);
        assert.ok(await stalled(peer), "no echo, no reset, while the tree is away");
        assert.equal((await run(undefined, "copy")).code, 0);
        const restored = await retriedWhilePidsTaken(() => run(hosts.b, "containerRestore"));
        assert.equal(restored.code, 0, errorLines(restored.out));
        tree.restored(tree.pid);
        const announced = await run(hosts.b, "containerAnnounce");
        assert.equal(announced.code, 0, announced.out);
        await peer.flowing();
        assertWhole(await peer.stop());
        // The namespace comes back with its rules (CRIU restores them before its
        // veth joins B's bridge, at the end of the restore: nothing reaches it
        // before), the lock among them, opened at network-unlock and removed
        // at post-resume.
        assert.deepEqual((await hook.locks()).map((line) => line.trim()), [
          "pre-dump",
          "network-lock NETLOCK",
          "post-dump NETLOCK",
          "pre-restore",
          "setup-namespaces",
          "post-setup-namespaces NETLOCK",
          "post-restore NETLOCK",
          "network-unlock NETLOCK",
          "pre-resume NETLOCK",
          "post-resume",
        ]);
        assert.ok(await helpersGone(), "no helper left");
        assert.equal(
          (await sh(["nsenter", `--net=${hosts.b.path}`, "--", "ip", "link", "show", outer])).code,
          0,
          "the veth's outer end is on B",
        );
      } finally {
        await stopPageServer(imagesB);
        await container[Symbol.asyncDispose]();
        await Deno.remove(images, { recursive: true }).catch(() => {});
        await Deno.remove(imagesB, { recursive: true }).catch(() => {});
      }
    },
  });
}
