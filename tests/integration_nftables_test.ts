/**
 * The nftables backend, `--backend auto`, unlock across backends, and
 * `--criu` cleanup of the locks CRIU itself leaves behind.
 */
import { CRIU_IPTABLES_LOCK, criuNftLock } from "./helpers/criu_texts.ts";
import { lockNetwork, NetlockError } from "../mod.ts";
import assert from "node:assert/strict";
import {
  cli,
  countLines,
  createNetns,
  inNamespace,
  integration,
  snapshot,
  toolsOnly,
} from "./helpers/netns.ts";

const LOCK_TABLE = "table inet NETLOCK {\n" +
  "\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n" +
  "\t\tmeta mark 0x0000c114 accept\n\t}\n\n" +
  "\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n" +
  "\t\tmeta mark 0x0000c114 accept\n\t}\n}\n";

Deno.test({
  ...integration,
  name: "nftables: one inet table; lock twice changes nothing; the user's tables are untouched",
  async fn() {
    await using netns = await createNetns();
    await inNamespace(netns, [
      "nft",
      "add table inet user; add chain inet user c { type filter hook input priority 10; policy accept; }; add rule inet user c tcp dport 80 counter accept; add table ip other",
    ]);
    const before = await snapshot(netns);
    const first = await cli(["lock", "-b", "nftables", "--json", "--netns", netns.name]);
    const second = await cli(["lock", "-b", "nftables", "--json", "--netns", netns.name]);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(second.code, 0, second.stderr);
    assert.equal(JSON.parse(first.stdout).changed, true);
    assert.equal(JSON.parse(second.stdout).changed, false);
    assert.equal((await netns.run(["nft", "list", "table", "inet", "NETLOCK"])).stdout, LOCK_TABLE);
    const status = await cli(["status", "--json", "--netns", netns.name]);
    assert.equal(status.code, 0);
    assert.equal(JSON.parse(status.stdout).backend, "nftables");
    const unlock1 = await cli(["unlock", "-b", "nftables", "--json", "--netns", netns.name]);
    const unlock2 = await cli(["unlock", "-b", "nftables", "--json", "--netns", netns.name]);
    assert.equal(JSON.parse(unlock1.stdout).changed, true);
    assert.equal(JSON.parse(unlock2.stdout).changed, false);
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "nftables: a tampered table is repaired in one transaction",
  async fn() {
    await using netns = await createNetns();
    await inNamespace(netns, [
      "nft",
      "add table inet NETLOCK; add chain inet NETLOCK input { type filter hook input priority 0; policy accept; }",
    ]);
    assert.equal((await cli(["status", "--netns", netns.name])).code, 3);
    const locked = await cli(["lock", "-b", "nftables", "--json", "--netns", netns.name]);
    assert.equal(locked.code, 0, locked.stderr);
    assert.equal(JSON.parse(locked.stdout).changed, true);
    assert.equal((await netns.run(["nft", "list", "table", "inet", "NETLOCK"])).stdout, LOCK_TABLE);
    assert.equal((await cli(["unlock", "--netns", netns.name])).code, 0);
    assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "");
  },
});

Deno.test({
  ...integration,
  name: "nftables: a lock's own unlock deletes the table it made in one run, and no other",
  async fn() {
    await using netns = await createNetns();
    await inNamespace(netns, ["nft", "add table inet user; add table ip other"]);
    const before = await snapshot(netns);
    const spawned: string[] = [];
    const options = {
      backend: "nftables" as const,
      log: (line: string) => line.startsWith("+ ") && spawned.push(line),
    };
    const lock = await lockNetwork({ netns: netns.path }, options);
    assert.equal(lock.changed, true);
    spawned.length = 0;
    const unlocked = await lock.unlock();
    assert.deepEqual(
      { changed: unlocked.changed, locked: unlocked.locked, kinds: unlocked.kinds },
      { changed: true, locked: false, kinds: ["netns"] },
    );
    assert.equal(unlocked.target.netns, lock.target.netns);
    assert.equal(spawned.length, 1, spawned.join("\n"));
    assert.match(spawned[0], / nft -e -f -$/);
    assert.equal(await snapshot(netns), before);

    // A lock that found the table made nothing: its unlock reads and plans;
    // the maker's, its table gone, changes nothing.
    const maker = await lockNetwork({ netns: netns.path }, options);
    const finder = await lockNetwork({ netns: netns.path }, options);
    assert.equal(finder.changed, false);
    assert.equal((await finder.unlock()).changed, true);
    assert.equal((await maker.unlock()).changed, false);
    assert.equal(await snapshot(netns), before);

    // Its table gone and another of the name made since: the handle's
    // transaction changes nothing and the unlock refuses the foreign table.
    const again = await lockNetwork({ netns: netns.path }, options);
    await inNamespace(netns, [
      "nft",
      "delete table inet NETLOCK; add table inet NETLOCK; add chain inet NETLOCK c; " +
      "add rule inet NETLOCK c tcp dport 22 counter",
    ]);
    await assert.rejects(again.unlock(), (error: NetlockError) => error.code === "NAME_IN_USE");
    assert.match(await inNamespace(netns, ["nft", "list", "table", "inet", "NETLOCK"]), /dport 22/);
  },
});

Deno.test({
  ...integration,
  name: "unlock removes the lock whichever backend made it",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    for (const [lockWith, unlockWith] of [["iptables", "nftables"], ["nftables", "iptables"]]) {
      assert.equal((await cli(["lock", "-b", lockWith, "--netns", netns.name])).code, 0);
      const status = await cli(["status", "-b", unlockWith, "--json", "--netns", netns.name]);
      assert.equal(
        JSON.parse(status.stdout).backend,
        lockWith,
        "status names the backend holding the lock",
      );
      const unlocked = await cli(["unlock", "-b", unlockWith, "--json", "--netns", netns.name]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.equal(JSON.parse(unlocked.stdout).changed, true);
      assert.equal(JSON.parse(unlocked.stdout).backend, lockWith);
      assert.equal(
        await snapshot(netns),
        before,
        `${lockWith} lock removed by unlock -b ${unlockWith}`,
      );
    }
  },
});

Deno.test({
  ...integration,
  name: "--backend auto uses nftables, and iptables when nft is missing",
  async fn() {
    await using netns = await createNetns();
    const auto = await cli(["lock", "-b", "auto", "--json", "--netns", netns.name]);
    assert.equal(JSON.parse(auto.stdout).backend, "nftables");
    assert.equal((await cli(["unlock", "--netns", netns.name])).code, 0);
    // A PATH holding every tool but nft: nsenter cannot execute it.
    await using noNft = await toolsOnly([
      "nsenter",
      "stat",
      "iptables-restore",
      "ip6tables-restore",
      "iptables-save",
      "ip6tables-save",
      "iptables",
      "ip6tables",
    ]);
    const fallback = await cli(["lock", "-b", "auto", "--json", "-v", "--netns", netns.name], {
      env: { PATH: noNft.path },
    });
    assert.equal(fallback.code, 0, fallback.stderr);
    assert.equal(JSON.parse(fallback.stdout).backend, "iptables");
    assert.match(fallback.stderr, /falling back to iptables/);
    assert.equal((await cli(["unlock", "--netns", netns.name])).code, 0);
    assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "");
  },
});

Deno.test({
  ...integration,
  name: "--criu finds and removes CRIU's own leftover locks and nothing else",
  async fn() {
    await using netns = await createNetns();
    const inNs = (argv: string[], stdin?: string) => inNamespace(netns, argv, stdin);
    // The user's own things, which must survive.
    await inNs(["iptables", "-N", "CRIUX"]);
    await inNs(["iptables", "-A", "CRIUX", "-j", "RETURN"]);
    await inNs([
      "nft",
      "add table inet other; add chain inet other c { type filter hook output priority 5; }",
    ]);
    const before = await snapshot(netns);
    // CRIU's exact lock texts: the iptables lock applied twice (duplicated jumps), both families,
    // and its nftables lock table.
    for (const tool of ["iptables-restore", "ip6tables-restore"]) {
      await inNs([tool, "-w", "--noflush"], CRIU_IPTABLES_LOCK);
      await inNs([tool, "-w", "--noflush"], CRIU_IPTABLES_LOCK);
    }
    const table = "inet CRIU-0123456789abcdef0123";
    await inNs(["nft", "-f", "-"], criuNftLock(table));
    assert.equal(countLines((await netns.run(["iptables-save"])).stdout, /^-A INPUT -j CRIU$/), 2);

    const plain = await cli(["status", "--json", "--netns", netns.name]);
    assert.equal(plain.code, 3, "without --criu, CRIU's lock is not netlock's");
    const status = await cli(["status", "--criu", "--json", "--netns", netns.name]);
    assert.equal(status.code, 0, "with --criu, CRIU's lock counts as locked");
    assert.equal(JSON.parse(status.stdout).state, "unlocked");
    assert.deepEqual(JSON.parse(status.stdout).criu, {
      iptables: ["ipv4", "ipv6"],
      nftables: ["CRIU-0123456789abcdef0123"],
    });
    const unlocked = await cli(["unlock", "--criu", "--json", "--netns", netns.name]);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    assert.equal(JSON.parse(unlocked.stdout).changed, true);
    assert.deepEqual(JSON.parse(unlocked.stdout).criu.nftables, ["CRIU-0123456789abcdef0123"]);
    assert.equal(
      await snapshot(netns),
      before,
      "CRIUX and inet other survive, CRIU's locks are gone",
    );
    const after = await cli(["status", "--criu", "--json", "--netns", netns.name]);
    assert.deepEqual(JSON.parse(after.stdout).criu, { iptables: [], nftables: [] });
  },
});

Deno.test({
  ...integration,
  name: "nftables: the lock leaves exactly the chains and rules CRIU's own nftables lock leaves",
  async fn() {
    await using criu = await createNetns();
    await using ours = await createNetns();
    // CRIU's commands, literally and one at a time, as CRIU runs them.
    for (const command of criuNftLock("inet NETLOCK").trim().split("\n")) {
      await inNamespace(criu, ["nft", command]);
    }
    const locked = await cli(["lock", "-b", "nftables", "--netns", ours.name]);
    assert.equal(locked.code, 0, locked.stderr);
    for (const hook of ["input", "output"]) {
      const listed = async (netns: typeof criu) =>
        (await netns.run(["nft", "list", "chain", "inet", "NETLOCK", hook])).stdout;
      assert.equal(await listed(ours), await listed(criu), hook);
    }
    // Nothing else in either table: the same objects, whatever their order.
    const objects = async (netns: typeof criu) =>
      (await netns.run(["nft", "list", "table", "inet", "NETLOCK"])).stdout.split("\n")
        .map((line) => line.trim()).filter(Boolean).sort();
    assert.deepEqual(await objects(ours), await objects(criu));
    assert.equal((await cli(["unlock", "--netns", ours.name])).code, 0);
  },
});
