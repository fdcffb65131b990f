/**
 * Coexistence: a namespace full of other people's rules — filter, mangle and
 * raw rules, user chains, nft tables with base chains at other priorities, a
 * lock CRIU left, iptables-legacy rules beside iptables-nft. Lock + unlock,
 * with either backend and in connection mode, leaves each exactly as it was.
 */
import { CRIU_IPTABLES_LOCK } from "./helpers/criu_texts.ts";
import assert from "node:assert/strict";
import {
  cli,
  createNetns,
  inNamespace,
  integration,
  startEndpoint,
  type TestNetns,
} from "./helpers/netns.ts";

async function furnish(netns: TestNetns): Promise<void> {
  const run = (argv: string[], input?: string) => inNamespace(netns, argv, input);
  await run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]);
  await run(["iptables", "-P", "FORWARD", "DROP"]);
  await run(["iptables", "-N", "USER-CHAIN"]);
  await run(["iptables", "-A", "USER-CHAIN", "-s", "192.0.2.0/24", "-j", "RETURN"]);
  await run(["iptables", "-I", "OUTPUT", "-j", "USER-CHAIN"]);
  await run(["iptables", "-t", "mangle", "-A", "PREROUTING", "-j", "MARK", "--set-mark", "0x7"]);
  await run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "NOTRACK"]);
  await run(["ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "-j", "ACCEPT"]);
  await run(
    ["nft", "-f", "-"],
    "table inet firewall {\n" +
      "\tchain early {\n\t\ttype filter hook input priority -150; policy accept;\n\t\tct state invalid drop\n\t}\n" +
      "\tchain late {\n\t\ttype filter hook output priority 100; policy accept;\n\t}\n}\n" +
      "table ip6 other {\n\tset blocked {\n\t\ttype ipv6_addr\n\t\telements = { 2001:db8::1 }\n\t}\n}\n",
  );
  // A lock CRIU left behind (its own text, applied twice as a failed restore does).
  await run(["iptables-restore", "-w", "--noflush"], CRIU_IPTABLES_LOCK);
  await run(["iptables-legacy", "-A", "INPUT", "-s", "198.51.100.7", "-j", "DROP"]);
}

/** Every view of the namespace's rules, counters zeroed, legacy tables too. */
async function everything(netns: TestNetns): Promise<string> {
  const views = [];
  for (
    const argv of [["iptables-save"], ["ip6tables-save"], ["iptables-legacy-save"], [
      "nft",
      "list",
      "ruleset",
    ]]
  ) {
    const out = await netns.run(argv);
    views.push(
      `## ${argv[0]}\n` + out.stdout.split("\n").filter((l) => !l.startsWith("#"))
        .map((l) =>
          l.replace(/\[[0-9]+:[0-9]+\]/g, "[0:0]").replace(/packets [0-9]+ bytes [0-9]+/g, "")
        ).join("\n"),
    );
  }
  return views.join("\n");
}

for (const args of [["-b", "iptables"], ["-b", "nftables"]]) {
  Deno.test({
    ...integration,
    name: `coexistence (${
      args[1]
    }): other rules, chains, tables, CRIU's lock and legacy rules survive lock + unlock`,
    async fn() {
      await using netns = await createNetns();
      await furnish(netns);
      const before = await everything(netns);
      const locked = await cli(["lock", ...args, "--netns", netns.name]);
      assert.equal(locked.code, 0, locked.stderr);
      assert.equal((await cli(["status", "--netns", netns.name])).code, 0);
      assert.notEqual(await everything(netns), before);
      const unlocked = await cli(["unlock", "--netns", netns.name]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.equal(await everything(netns), before);
    },
  });
}

Deno.test({
  ...integration,
  name: "coexistence (connection mode): the process's lock comes and goes, nothing else moves",
  async fn() {
    await using netns = await createNetns();
    // Connected first: the furnishing includes a lock CRIU left, which stops traffic.
    await using _server = await startEndpoint(netns, ["server", "127.0.0.1:7100"]);
    await using client = await startEndpoint(netns, ["client", "127.0.0.1", "7100", "2"]);
    await furnish(netns);
    const pid = String(client.pid);
    const before = await everything(netns);
    for (const backend of ["iptables", "nftables"]) {
      const locked = await cli(["lock", "--json", "--mode", "connections", "-b", backend, pid]);
      assert.equal(locked.code, 0, locked.stderr);
      assert.equal(JSON.parse(locked.stdout).connections, 2, "the client's two connections");
      const status = await cli(["status", "--json", "--mode", "connections", pid]);
      assert.equal(status.code, 0, "locked");
      assert.equal(JSON.parse(status.stdout).backend, backend);
      assert.notEqual(await everything(netns), before, `${backend}: the lock is in the rules`);
      const unlocked = await cli(["unlock", "--mode", "connections", pid]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.equal(await everything(netns), before, backend);
    }
  },
});
