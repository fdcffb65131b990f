/**
 * Connection mode against real TCP connections in a namespace the test
 * creates: a client's connections are frozen in both directions while an
 * unrelated client and new connections keep working, and after unlock every
 * byte arrives in order, without a reset.
 */
import assert from "node:assert/strict";
import { cli, cliInside, createNetns, integration, probe, startEndpoint } from "./helpers/netns.ts";

for (const backend of ["iptables", "nftables"]) {
  Deno.test({
    ...integration,
    name: `${backend}: connection mode freezes one process's connections and loses nothing`,
    async fn() {
      await using netns = await createNetns();
      await using server = await startEndpoint(netns, ["server", "127.0.0.1:7100"]);
      await using client = await startEndpoint(netns, ["client", "127.0.0.1", "7100", "3"]);
      await using other = await startEndpoint(netns, ["client", "127.0.0.1", "7100", "1"]);
      assert.equal(await client.ask("send a1"), "done");
      assert.equal(await client.ask("check a1 3000"), "ok");
      assert.equal(await other.ask("send b1"), "done");
      assert.equal(await other.ask("check b1 3000"), "ok");
      assert.equal(await server.ask("received"), "8");

      const locked = await cli([
        "lock",
        "--mode",
        "connections",
        "--backend",
        backend,
        "--json",
        String(client.pid),
      ]);
      assert.equal(locked.code, 0, locked.stderr);
      const report = JSON.parse(locked.stdout);
      assert.equal(report.mode, "connections");
      assert.equal(report.connections, 3);
      assert.equal(report.backend, backend);

      // Server to client: the unrelated client gets "S", the locked one does not.
      assert.equal(await server.ask("broadcast S"), "done");
      assert.equal(await other.ask("check b1S 3000"), "ok");
      assert.match(await client.ask("check a1S 1000"), /^got \["a1","a1","a1"\]$/);
      // Client to server: the locked client's bytes do not arrive; the other's do.
      assert.equal(await client.ask("send a2"), "done");
      assert.equal(await other.ask("send b2"), "done");
      assert.equal(await other.ask("check b1Sb2 3000"), "ok");
      assert.equal(await server.ask("received"), "10", "a2 did not reach the server");
      // New connections are not affected.
      assert.equal(await probe(netns, "127.0.0.1", 7100), "ok");

      const status = await cli(["status", "--mode", "connections", "--json", String(client.pid)]);
      assert.equal(status.code, 0, status.stderr);
      assert.equal(JSON.parse(status.stdout).connections, 3);
      assert.equal(JSON.parse(status.stdout).backend, backend);

      const unlocked = await cli(["unlock", "--mode", "connections", String(client.pid)]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      // TCP retransmits what was dropped: every byte, in order, no reset.
      assert.equal(await client.ask("check a1Sa2 20000"), "ok");
      assert.equal(
        await server.ask("received"),
        "21",
        "a2 arrived (3 × 2 bytes), and the probe's 5",
      );
      const ruleset = await netns.run(["nft", "list", "ruleset"]);
      assert.equal(ruleset.stdout, "", "the connection lock left nothing behind");
    },
  });
}

Deno.test({
  ...integration,
  name:
    "auto mode picks connections inside the target's namespace; unlock works after the process died",
  async fn() {
    await using netns = await createNetns();
    await using _server = await startEndpoint(netns, ["server", "127.0.0.1:7100"]);
    await using client = await startEndpoint(netns, ["client", "127.0.0.1", "7100", "2"]);
    // Run netlock itself inside the namespace: the client shares its namespace.
    const inside = (args: string[]) => cliInside(netns, args);
    const locked = await inside(["lock", "--json", String(client.pid)]);
    assert.equal(locked.code, 0, locked.stderr);
    assert.equal(JSON.parse(locked.stdout).mode, "connections");
    assert.equal(JSON.parse(locked.stdout).connections, 2);
    // From outside, the same PID is in another namespace: auto means namespace mode.
    const outside = await cli(["lock", "--dry-run", "--json", String(client.pid)]);
    assert.equal(JSON.parse(outside.stdout.trim().split("\n").at(-1)!).mode, "netns");

    await client.kill();
    const unlocked = await inside(["unlock", "--json", String(client.pid)]);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    assert.equal(JSON.parse(unlocked.stdout).changed, true);
    assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "");
  },
});
