/**
 * The lock against real TCP traffic inside a namespace the test creates:
 * unmarked connections time out (they are not refused: a refusal would mean
 * an RST got through), marked ones pass, and unlock restores everything.
 */
import assert from "node:assert/strict";
import { cli, createNetns, integration, must, probe, startServer } from "./helpers/netns.ts";

for (const backend of ["iptables", "nftables"]) {
  Deno.test({
    ...integration,
    name:
      `${backend}: lock drops unmarked IPv4 and IPv6 traffic, lets marked traffic pass; unlock restores`,
    async fn() {
      await using netns = await createNetns();
      await using _server = await startServer(netns, [
        "127.0.0.1:7000",
        "127.0.0.1:7001",
        "[::1]:7000",
        "[::1]:7001",
      ]);
      // The test's own mangle rules mark everything to and from port 7001.
      for (const tool of ["iptables", "ip6tables"]) {
        for (const dir of ["--dport", "--sport"]) {
          await must([
            "nsenter",
            `--net=${netns.path}`,
            "--",
            tool,
            "-t",
            "mangle",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            dir,
            "7001",
            "-j",
            "MARK",
            "--set-mark",
            "0xC114",
          ]);
        }
      }
      assert.equal(await probe(netns, "127.0.0.1", 7000), "ok");
      assert.equal(await probe(netns, "::1", 7000), "ok");
      assert.equal(await probe(netns, "127.0.0.1", 7999), "ConnectionRefused");

      const locked = await cli(["lock", "--backend", backend, "--json", "--netns", netns.name]);
      assert.equal(locked.code, 0, locked.stderr);
      assert.equal(JSON.parse(locked.stdout).backend, backend);

      assert.equal(await probe(netns, "127.0.0.1", 7000, 1000), "timeout");
      assert.equal(await probe(netns, "::1", 7000, 1000), "timeout");
      assert.equal(await probe(netns, "127.0.0.1", 7999, 1000), "timeout", "no RST may leak");
      assert.equal(await probe(netns, "127.0.0.1", 7001), "ok", "marked IPv4 traffic passes");
      assert.equal(await probe(netns, "::1", 7001), "ok", "marked IPv6 traffic passes");

      const unlocked = await cli(["unlock", "--netns", netns.name]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.equal(await probe(netns, "127.0.0.1", 7000), "ok");
      assert.equal(await probe(netns, "::1", 7000), "ok");
    },
  });
}

Deno.test({
  ...integration,
  name: "--ipv6 off locks IPv4 only",
  async fn() {
    await using netns = await createNetns();
    await using _server = await startServer(netns, ["127.0.0.1:7000", "[::1]:7000"]);
    const locked = await cli(["lock", "--ipv6", "off", "--json", "--netns", netns.name]);
    assert.equal(locked.code, 0, locked.stderr);
    assert.deepEqual(JSON.parse(locked.stdout).families, ["ipv4"]);
    assert.equal(await probe(netns, "127.0.0.1", 7000, 1000), "timeout");
    assert.equal(await probe(netns, "::1", 7000), "ok");
    const unlocked = await cli(["unlock", "--netns", netns.name]);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    assert.equal(await probe(netns, "127.0.0.1", 7000), "ok");
  },
});
