/**
 * The two-phase lock of the library: arm (probe, start the tools), then fire
 * (write the ruleset). Same result as lockNetwork / unlockNetwork; a
 * cancelled arm applies nothing; a fire that finds a lock already there
 * changes nothing.
 */
import assert from "node:assert/strict";
import { armNetworkLock, armNetworkUnlock, getLockStatus, lockNetwork } from "../mod.ts";
import { createNetns, integration, probe, snapshot, startServer } from "./helpers/netns.ts";

for (const backend of ["iptables", "nftables"] as const) {
  Deno.test({
    ...integration,
    name: `${backend}: an armed lock and an armed unlock stop and restore traffic`,
    async fn() {
      await using netns = await createNetns();
      await using _server = await startServer(netns, ["127.0.0.1:7000"]);
      const before = await snapshot(netns);
      const target = { netns: netns.path };

      const cancelled = await armNetworkLock(target, { backend });
      await cancelled.cancel();
      assert.equal(await snapshot(netns), before, "a cancelled arm applies nothing");

      const armed = await armNetworkLock(target, { backend });
      const lock = await armed.fire();
      assert.equal(lock.backend, backend);
      assert.equal(lock.changed, true);
      assert.equal((await getLockStatus(target)).state, "locked");
      assert.equal(await probe(netns, "127.0.0.1", 7000, 1000), "timeout");

      // Armed again while locked: the fire finds the lock and changes nothing.
      const again = await (await armNetworkLock(target, { backend })).fire();
      assert.equal(again.changed, false);

      const unlock = await armNetworkUnlock(target, { backend });
      const fired = await unlock.fire();
      assert.equal(fired.changed, true);
      assert.equal(await probe(netns, "127.0.0.1", 7000), "ok");
      await unlock.finish();
      assert.equal(await snapshot(netns), before, "nothing of the lock is left");
    },
  });
}

Deno.test({
  ...integration,
  name:
    "an armed unlock of an unlocked namespace, or of another backend's lock, is the plain unlock",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const target = { netns: netns.path };
    const nothing = await (await armNetworkUnlock(target)).fire();
    assert.equal(nothing.changed, false);
    await lockNetwork(target, { backend: "iptables" });
    // Told the wrong backend: the armed step fails, the plain unlock removes it.
    const wrong = await armNetworkUnlock(target, {}, { backend: "nftables", families: ["ipv4"] });
    const result = await wrong.fire();
    assert.equal(result.changed, true);
    await wrong.finish();
    assert.equal(await snapshot(netns), before);
  },
});
