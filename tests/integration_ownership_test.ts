/**
 * netlock changes only what it made: a table or chain that carries the
 * lock's name but is not a netlock lock is refused by lock, status, unlock,
 * unlock --all and list (exit 1, one line naming it), and stays byte for
 * byte as it was. A lock that fails leaves a namespace full of other rules
 * exactly as it was. What status says agrees with the lock that was made
 * (`--ipv6 off`, another `--mark`).
 */
import assert from "node:assert/strict";
import {
  cli,
  countLines,
  createNetns,
  fakeTools,
  inNamespace,
  integration,
  snapshot,
  type TestNetns,
} from "./helpers/netns.ts";

/**
 * Every command that could touch a lock named NAME refuses someone else's
 * object of that name when it is all there is (exit 1, one line naming it);
 * `list` shows it as `foreign`; nothing changes.
 */
async function assertLeftAlone(
  netns: TestNetns,
  name: string,
  ownBackend: string,
  what: RegExp,
): Promise<void> {
  const before = await snapshot(netns);
  for (const args of [["lock", "-b", ownBackend], ["status"], ["unlock"], ["unlock", "--all"]]) {
    const result = await cli([...args, "--name", name, "--netns", netns.name]);
    const label = args.join(" ");
    assert.equal(result.code, 1, `${label}: ${result.stdout}${result.stderr}`);
    const lines = result.stderr.split("\n").filter(Boolean);
    assert.equal(lines.length, 1, `${label}: ${result.stderr}`);
    assert.match(lines[0], what, label);
    assert.match(lines[0], /is not a netlock lock/, label);
    assert.equal(await snapshot(netns), before, `${label} changed nothing`);
  }
  const listed = await cli(["list", "--json", "--name", name, "--netns", netns.name]);
  assert.equal(listed.code, 0, listed.stderr);
  const kinds = listed.stdout.split("\n").filter(Boolean).map((line) => JSON.parse(line).kind);
  assert.deepEqual([...new Set(kinds)], ["foreign"]);
  // The other backend's lock of that name is a different object: it comes and goes,
  // and the unlock leaves the other one alone, saying so.
  const other = ownBackend === "iptables" ? "nftables" : "iptables";
  assert.equal((await cli(["lock", "-b", other, "--name", name, "--netns", netns.name])).code, 0);
  const status = await cli(["status", "--name", name, "--netns", netns.name]);
  assert.equal(status.code, 0, status.stderr);
  const unlocked = await cli(["unlock", "--name", name, "--netns", netns.name]);
  assert.equal(unlocked.code, 0, unlocked.stderr);
  assert.match(unlocked.stderr, /^warning: .* is not a netlock lock: left alone$/m);
  assert.equal(await snapshot(netns), before);
}

Deno.test({
  ...integration,
  name: "a user's nftables table with the lock's name is never adopted, rewritten or deleted",
  async fn() {
    await using netns = await createNetns();
    await inNamespace(netns, [
      "nft",
      "add table inet filter; " +
      "add chain inet filter input { type filter hook input priority 0; policy accept; }; " +
      "add rule inet filter input ip saddr 10.9.9.9 accept",
    ]);
    await assertLeftAlone(netns, "filter", "nftables", /^error: .*table inet filter is not/);
    // The user's rule is still there and still theirs.
    const table = (await netns.run(["nft", "list", "table", "inet", "filter"])).stdout;
    assert.match(table, /ip saddr 10\.9\.9\.9 accept/);
    assert.match(table, /policy accept/);
  },
});

Deno.test({
  ...integration,
  name: "a user's iptables chain with the lock's name is never adopted, flushed or deleted",
  async fn() {
    await using netns = await createNetns();
    for (const tool of ["iptables", "ip6tables"]) {
      const source = tool === "iptables" ? "10.9.9.9" : "2001:db8::9";
      await inNamespace(netns, [tool, "-N", "NETLOCK"]);
      await inNamespace(netns, [tool, "-A", "NETLOCK", "-s", source, "-j", "ACCEPT"]);
      await inNamespace(netns, [tool, "-A", "INPUT", "-j", "NETLOCK"]);
    }
    await assertLeftAlone(
      netns,
      "NETLOCK",
      "iptables",
      /^error: .*chain NETLOCK of table ip6? filter is not/,
    );
    const saved = (await netns.run(["iptables-save"])).stdout;
    assert.equal(countLines(saved, /^-A NETLOCK -s 10\.9\.9\.9\/32 -j ACCEPT$/), 1);
  },
});

Deno.test({
  ...integration,
  name: "a user's chain with a connection lock's name: unlock --all refuses, list says foreign",
  async fn() {
    await using netns = await createNetns();
    await inNamespace(netns, ["iptables", "-N", "NETLOCK-c4242"]);
    await inNamespace(netns, ["iptables", "-A", "NETLOCK-c4242", "-j", "ACCEPT"]);
    const before = await snapshot(netns);
    const all = await cli(["unlock", "--all", "--netns", netns.name]);
    assert.equal(all.code, 1, all.stdout);
    assert.match(all.stderr, /chain NETLOCK-c4242 of table ip filter is not a netlock lock/);
    const listed = await cli(["list", "--json", "--netns", netns.name]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(
      listed.stdout.split("\n").filter(Boolean).map((line) => JSON.parse(line)).map((
        l,
      ) => [l.kind, l.name]),
      [["foreign", "NETLOCK-c4242"]],
    );
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "with a lock in place, --name INPUT is refused before anything runs; the lock is whole",
  async fn() {
    await using netns = await createNetns();
    await inNamespace(netns, ["iptables", "-A", "INPUT", "-s", "10.9.9.9", "-j", "ACCEPT"]);
    assert.equal((await cli(["lock", "--netns", netns.name])).code, 0);
    const locked = await snapshot(netns);
    for (const command of ["lock", "unlock", "status"]) {
      const result = await cli([command, "--name", "INPUT", "--netns", netns.name]);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /^error: Invalid name "INPUT": a built-in chain/);
    }
    assert.equal(await snapshot(netns), locked);
    assert.equal((await cli(["status", "--netns", netns.name])).code, 0);
    assert.equal((await cli(["unlock", "--netns", netns.name])).code, 0);
  },
});

/** Other people's rules in the filter tables and in nftables. */
async function furnish(netns: TestNetns): Promise<void> {
  await inNamespace(netns, [
    "iptables",
    "-A",
    "INPUT",
    "-p",
    "tcp",
    "--dport",
    "22",
    "-j",
    "ACCEPT",
  ]);
  await inNamespace(netns, ["iptables", "-N", "USER-CHAIN"]);
  await inNamespace(netns, ["iptables", "-A", "USER-CHAIN", "-s", "192.0.2.0/24", "-j", "RETURN"]);
  await inNamespace(netns, ["ip6tables", "-A", "OUTPUT", "-p", "ipv6-icmp", "-j", "ACCEPT"]);
  await inNamespace(netns, [
    "nft",
    "add table inet user; add chain inet user c { type filter hook input priority 10; }; " +
    "add rule inet user c tcp dport 80 accept",
  ]);
}

const FAILING = "#!/bin/sh\ncat >/dev/null\necho 'injected failure' >&2\nexit 1\n";

for (
  const [backend, tool] of [
    ["iptables", "ip6tables-restore"],
    ["nftables", "nft"],
  ]
) {
  Deno.test({
    ...integration,
    name: `${backend}: a lock that fails leaves a namespace full of other rules byte for byte`,
    async fn() {
      await using netns = await createNetns();
      await furnish(netns);
      const before = await snapshot(netns);
      // iptables: IPv4 is applied for real, then IPv6 fails and IPv4 is rolled back.
      await using fake = await fakeTools({ [tool]: FAILING });
      const result = await cli(["lock", "-b", backend, "--netns", netns.name], {
        env: { PATH: fake.path },
      });
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, /injected failure/);
      assert.equal(await snapshot(netns), before);
    },
  });
}

Deno.test({
  ...integration,
  name: "status agrees with a lock made with --ipv6 off, and with a lock made with another mark",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    assert.equal((await cli(["lock", "--ipv6", "off", "--netns", netns.name])).code, 0);
    const v4 = await cli(["status", "--json", "--netns", netns.name]);
    assert.equal(v4.code, 0, v4.stdout);
    assert.equal(JSON.parse(v4.stdout).state, "locked");
    assert.deepEqual(JSON.parse(v4.stdout).families, ["ipv4"]);
    // A lock of both families afterwards replaces it.
    const both = await cli(["lock", "--json", "--netns", netns.name]);
    assert.equal(JSON.parse(both.stdout).changed, true);
    const v46 = await cli(["status", "--json", "--netns", netns.name]);
    assert.deepEqual(JSON.parse(v46.stdout).families, ["ipv4", "ipv6"]);
    assert.equal((await cli(["unlock", "--netns", netns.name])).code, 0);
    assert.equal(await snapshot(netns), before);

    // A lock is taken by its name, whatever its mark: status reports the mark found.
    for (const backend of ["iptables", "nftables"]) {
      assert.equal(
        (await cli(["lock", "-b", backend, "--mark", "0x10", "--netns", netns.name])).code,
        0,
      );
      const status = await cli(["status", "--json", "--netns", netns.name]);
      assert.equal(status.code, 0, status.stdout);
      assert.equal(JSON.parse(status.stdout).state, "locked");
      assert.equal(JSON.parse(status.stdout).mark, "0x10");
      const refused = await cli(["unlock", "--mark", "0x20", "--netns", netns.name]);
      assert.equal(refused.code, 2, "unlock takes no --mark: it removes the lock of that name");
      const unlocked = await cli(["unlock", "--json", "--netns", netns.name]);
      assert.equal(JSON.parse(unlocked.stdout).changed, true);
      assert.equal(await snapshot(netns), before, backend);
    }
    // The nftables lock is one inet table for both families: --ipv6 is an iptables choice.
    const nft = await cli(["lock", "-b", "nftables", "--ipv6", "off", "--netns", netns.name]);
    assert.equal(nft.code, 2);
    assert.match(nft.stderr, /--ipv6 is for the iptables backend/);
  },
});
