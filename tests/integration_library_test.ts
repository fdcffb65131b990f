/**
 * The library API against a real namespace: `await using`, withNetworkLock
 * on return and throw, status states, dry run, timeout and abort.
 */
import assert from "node:assert/strict";
import {
  getLockStatus,
  lockNetwork,
  NetlockError,
  renderIptablesLock,
  unlockNetwork,
  withNetworkLock,
} from "../mod.ts";

const RULES = { name: "NETLOCK", mark: 0xC114 };
import {
  createNetns,
  fakeTools,
  inNamespace,
  integration,
  sh,
  snapshot,
  startSleeper,
} from "./helpers/netns.ts";

Deno.test({
  ...integration,
  name: "await using unlocks at the end of the scope",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    {
      await using lock = await lockNetwork({ netns: netns.path });
      assert.equal(lock.locked, true);
      assert.equal(lock.changed, true);
      assert.deepEqual(lock.families, ["ipv4", "ipv6"]);
      assert.equal((await getLockStatus({ netns: netns.name })).state, "locked");
    }
    assert.equal((await getLockStatus({ netns: netns.name })).state, "unlocked");
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "withNetworkLock() unlocks when the function throws, and returns its value otherwise",
  async fn() {
    await using netns = await createNetns();
    await assert.rejects(
      withNetworkLock({ netns: netns.path }, () => {
        throw new Error("dump failed");
      }),
      { message: "dump failed" },
    );
    assert.equal((await getLockStatus({ netns: netns.path })).state, "unlocked");
    const value = await withNetworkLock({ netns: netns.path }, async (lock) => {
      assert.equal((await getLockStatus({ netns: netns.path })).state, "locked");
      return lock.name;
    });
    assert.equal(value, "NETLOCK");
    assert.equal((await getLockStatus({ netns: netns.path })).state, "unlocked");
  },
});

Deno.test({
  ...integration,
  name: "status: an IPv4-only lock made so is locked; one whose IPv6 half is missing is partial",
  async fn() {
    await using netns = await createNetns();
    await lockNetwork({ netns: netns.path }, { ipv6: "off" });
    const chosen = await getLockStatus({ netns: netns.path });
    assert.equal(chosen.state, "locked");
    assert.deepEqual(chosen.families, ["ipv4"]);
    assert.equal((await unlockNetwork({ netns: netns.path })).changed, true);
    // The IPv4 half of a lock of both families, as a netlock killed halfway leaves it.
    await inNamespace(netns, ["iptables-restore", "-w", "--noflush"], renderIptablesLock(RULES));
    const status = await getLockStatus({ netns: netns.path });
    assert.equal(status.state, "partial");
    assert.equal(status.locked, false);
    const result = await unlockNetwork({ netns: netns.path });
    assert.equal(result.changed, true);
    assert.equal((await getLockStatus({ netns: netns.path })).state, "unlocked");
  },
});

Deno.test({
  ...integration,
  name: "a hung iptables-restore is killed at the timeout and nothing is left applied",
  async fn() {
    await using netns = await createNetns();
    await using fake = await fakeTools({ "iptables-restore": "#!/bin/sh\nexec sleep 30\n" });
    const before = await snapshot(netns);
    Deno.env.set("PATH", fake.path);
    try {
      await assert.rejects(
        lockNetwork({ netns: netns.path }, { timeoutMs: 300 }),
        (error: unknown) =>
          error instanceof NetlockError && error.code === "TIMEOUT" &&
          error.message ===
            `Cannot lock network of namespace ${netns.path}: iptables-restore did not finish within 0.3 s and was killed`,
      );
    } finally {
      Deno.env.delete("PATH");
      Deno.env.set("PATH", fake.path.split(":").slice(1).join(":"));
    }
    assert.equal(await snapshot(netns), before, "the IPv6 half was rolled back");
  },
});

Deno.test({
  ...integration,
  name: "an AbortSignal cancels the lock",
  async fn() {
    await using netns = await createNetns();
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(lockNetwork({ netns: netns.path }, { signal: controller.signal }));
    assert.equal((await getLockStatus({ netns: netns.path })).state, "unlocked");
  },
});

Deno.test({
  ...integration,
  name: "dry run on netlock's own namespace with --mode netns --force reports and changes nothing",
  async fn() {
    // netlock runs inside a namespace made for the test: that is its own namespace
    // here. The machine's own namespace is never a target, not even of a dry run.
    await using netns = await createNetns();
    await using sleeper = await startSleeper(netns);
    const before = await snapshot(netns);
    const mod = new URL("../mod.ts", import.meta.url).href;
    const program = `import { lockNetwork } from "${mod}";
      const lines = [];
      const lock = await lockNetwork(${sleeper.pid}, {
        mode: "netns", force: true, dryRun: true, log: (line) => lines.push(line),
      });
      console.log(JSON.stringify({ mode: lock.mode, dryRun: lock.dryRun, lines }));`;
    const result = await sh([
      "nsenter",
      `--net=${netns.path}`,
      "--",
      Deno.execPath(),
      "eval",
      program,
    ]);
    assert.equal(result.code, 0, result.stderr);
    const { mode, dryRun, lines } = JSON.parse(result.stdout);
    assert.equal(mode, "netns");
    assert.equal(dryRun, true);
    assert.ok(
      lines.some((line: string) => line.startsWith("would run: iptables-restore -w --noflush")),
    );
    assert.ok(lines.some((line: string) => line.startsWith("+ nsenter --target")));
    assert.equal(await snapshot(netns), before);
  },
});
