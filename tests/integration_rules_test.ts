/**
 * What the lock leaves in a namespace: exactly one lock however often or
 * concurrently it is applied, nothing after unlock, and every other rule,
 * chain and table untouched.
 */
import assert from "node:assert/strict";
import {
  cli,
  countLines,
  createNetns,
  fakeTools,
  integration,
  must,
  snapshot,
  startSleeper,
} from "./helpers/netns.ts";

Deno.test({
  ...integration,
  name:
    "lock twice leaves one jump per chain; unlock twice succeeds; a fresh namespace is empty again",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "");

    const first = await cli(["lock", "--json", "--netns", netns.name]);
    const second = await cli(["lock", "--json", "--netns", netns.name]);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(second.code, 0, second.stderr);
    assert.equal(JSON.parse(first.stdout).changed, true);
    assert.equal(JSON.parse(second.stdout).changed, false);
    for (const save of ["iptables-save", "ip6tables-save"]) {
      const rules = (await netns.run([save])).stdout;
      assert.equal(countLines(rules, /^-A INPUT -j NETLOCK$/), 1, save);
      assert.equal(countLines(rules, /^-A OUTPUT -j NETLOCK$/), 1, save);
      assert.equal(countLines(rules, /^-A NETLOCK -m mark --mark 0xc114 -j ACCEPT$/), 1, save);
      assert.equal(countLines(rules, /^-A NETLOCK -j DROP$/), 1, save);
    }
    const status = await cli(["status", "--netns", netns.name]);
    assert.equal(status.code, 0, status.stderr);

    const unlock1 = await cli(["unlock", "--json", "--netns", netns.name]);
    const unlock2 = await cli(["unlock", "--json", "--netns", netns.name]);
    assert.equal(unlock1.code, 0, unlock1.stderr);
    assert.equal(unlock2.code, 0, unlock2.stderr);
    assert.equal(JSON.parse(unlock1.stdout).changed, true);
    assert.equal(JSON.parse(unlock2.stdout).changed, false);
    assert.equal(
      (await netns.run(["nft", "list", "ruleset"])).stdout,
      "",
      "no empty filter tables left",
    );
    assert.equal(await snapshot(netns), before);
    assert.equal((await cli(["status", "--netns", netns.name])).code, 3);
  },
});

Deno.test({
  ...integration,
  name: "lock + unlock leave the namespace's own rules, chains and tables exactly as they were",
  async fn() {
    await using netns = await createNetns();
    const inNs = (argv: string[]) => must(["nsenter", `--net=${netns.path}`, "--", ...argv]);
    await inNs(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]);
    await inNs(["iptables", "-N", "USERCHAIN"]);
    await inNs(["iptables", "-A", "USERCHAIN", "-s", "10.1.2.3/32", "-j", "RETURN"]);
    await inNs(["iptables", "-A", "OUTPUT", "-j", "USERCHAIN"]);
    await inNs(["ip6tables", "-P", "FORWARD", "DROP"]);
    await inNs(["iptables", "-t", "mangle", "-A", "PREROUTING", "-j", "MARK", "--set-mark", "7"]);
    await inNs([
      "nft",
      "add table inet user; add chain inet user c { type filter hook input priority 10; }; add rule inet user c tcp dport 80 accept",
    ]);
    const before = await snapshot(netns);

    const locked = await cli(["lock", "--netns", netns.name]);
    assert.equal(locked.code, 0, locked.stderr);
    const during = (await netns.run(["iptables-save", "-t", "filter"])).stdout;
    assert.match(
      during,
      /^-A INPUT -j NETLOCK\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT$/m,
      "lock jumps come first",
    );
    const unlocked = await cli(["unlock", "--netns", netns.name]);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    assert.equal(await snapshot(netns), before);
  },
});

for (const backend of ["iptables", "nftables"]) {
  Deno.test({
    ...integration,
    name:
      `${backend}: eight concurrent locks leave exactly one lock; eight concurrent unlocks leave none`,
    async fn() {
      await using netns = await createNetns();
      const before = await snapshot(netns);
      const args = ["--backend", backend, "--netns", netns.name];
      const locks = await Promise.all(
        Array.from({ length: 8 }, () => cli(["lock", "--json", ...args])),
      );
      for (const result of locks) assert.equal(result.code, 0, result.stderr);
      assert.equal(locks.filter((r) => JSON.parse(r.stdout).changed).length >= 1, true);
      if (backend === "iptables") {
        for (const save of ["iptables-save", "ip6tables-save"]) {
          const rules = (await netns.run([save])).stdout;
          assert.equal(countLines(rules, /-j NETLOCK$/), 2, save);
          assert.equal(countLines(rules, /^-A NETLOCK /), 2, save);
        }
      } else {
        const ruleset = (await netns.run(["nft", "list", "ruleset"])).stdout;
        assert.equal(countLines(ruleset, /^table /), 1, ruleset);
        assert.equal(countLines(ruleset, /meta mark 0x0000c114 accept/), 2, ruleset);
        assert.equal(locks.filter((r) => JSON.parse(r.stdout).changed).length, 1);
      }
      const unlocks = await Promise.all(Array.from({ length: 8 }, () => cli(["unlock", ...args])));
      for (const result of unlocks) assert.equal(result.code, 0, result.stderr);
      assert.equal(await snapshot(netns), before);
    },
  });
}

Deno.test({
  ...integration,
  name: "a failing ip6tables-restore rolls the IPv4 lock back",
  async fn() {
    await using netns = await createNetns();
    await using fake = await fakeTools({
      "ip6tables-restore": "#!/bin/sh\necho 'ip6tables-restore: fake failure' >&2\nexit 1\n",
    });
    const before = await snapshot(netns);
    const result = await cli(["lock", "--netns", netns.name], { env: { PATH: fake.path } });
    assert.equal(result.code, 1);
    assert.equal(
      result.stderr,
      `error: Cannot lock network of namespace ${netns.path}: ip6tables-restore exited with code 1: ip6tables-restore: fake failure\n`,
    );
    assert.equal(await snapshot(netns), before, "no IPv4 rules left behind");
  },
});

Deno.test({
  ...integration,
  name: "a PID target locks that process's namespace",
  async fn() {
    await using netns = await createNetns();
    await using sleeper = await startSleeper(netns);
    const locked = await cli(["lock", "--json", String(sleeper.pid)]);
    assert.equal(locked.code, 0, locked.stderr);
    const report = JSON.parse(locked.stdout);
    assert.equal(report.target.pid, sleeper.pid);
    assert.match(report.target.netns, /^net:\[[0-9]+\]$/);
    assert.match((await netns.run(["iptables-save"])).stdout, /-A INPUT -j NETLOCK/);
    const status = await cli(["status", String(sleeper.pid)]);
    assert.equal(status.code, 0, status.stderr);
    const unlocked = await cli(["unlock", String(sleeper.pid)]);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "");
  },
});

Deno.test({
  ...integration,
  name: "--dry-run prints the ruleset and changes nothing",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const result = await cli(["lock", "--dry-run", "--netns", netns.name]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(
      result.stdout,
      /would run: iptables-restore -w --noflush <<EOF\n\*filter\n-N NETLOCK\n/,
    );
    assert.match(result.stdout, /would run: ip6tables-restore -w --noflush/);
    // The trace is what would change: no reads, no tool's complaints about them.
    assert.doesNotMatch(result.stdout + result.stderr, /^\+ nsenter|Error: |No such file/m);
    assert.match(result.stdout, /^would lock namespace /m);
    assert.equal(await snapshot(netns), before);
  },
});

for (const backend of ["iptables", "nftables"]) {
  Deno.test({
    ...integration,
    name:
      `--dry-run --json (${backend}): stdout is only JSON, marked dryRun; the trace is on stderr`,
    async fn() {
      await using netns = await createNetns();
      const before = await snapshot(netns);
      for (const command of ["lock", "unlock"]) {
        const result = await cli([
          command,
          "--dry-run",
          "--json",
          "-b",
          backend,
          "--netns",
          netns.name,
        ]);
        assert.equal(result.code, 0, result.stderr);
        const lines = result.stdout.split("\n").filter(Boolean);
        assert.equal(lines.length, 1, result.stdout);
        const record = JSON.parse(lines[0]);
        assert.equal(record.command, command);
        assert.equal(record.dryRun, true);
        if (command === "lock") {
          assert.equal(record.changed, true, "it would change the namespace");
          assert.match(result.stderr, /^would run: (iptables-restore|nft) /m);
        }
        assert.doesNotMatch(result.stderr, /^\+ nsenter|Error: |No such file/m);
      }
      assert.equal(await snapshot(netns), before);
    },
  });
}

Deno.test({
  ...integration,
  name: "run --dry-run prints what it would run and runs nothing",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const dir = await Deno.makeTempDir({ prefix: "nltest-dry-" });
    try {
      const file = `${dir}/ran`;
      const result = await cli(["run", "--dry-run", "--netns", netns.name, "--", "touch", file], {
        permissions: ["--allow-run=nsenter,touch"],
      });
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /would run: iptables-restore/);
      assert.match(result.stdout, new RegExp(`^would run: touch ${file}$`, "m"));
      assert.match(result.stdout, /^would unlock namespace /m);
      assert.equal(await Deno.stat(file).then(() => "ran", () => "did not run"), "did not run");
      const json = await cli(
        ["run", "--dry-run", "--json", "--netns", netns.name, "--", "touch", file],
        { permissions: ["--allow-run=nsenter,touch"] },
      );
      assert.equal(json.code, 0, json.stderr);
      const records = json.stdout.split("\n").filter(Boolean).map((line) => JSON.parse(line));
      assert.deepEqual(records.map((r) => [r.command, r.ok, r.dryRun]), [
        ["lock", true, true],
        ["run", true, true],
      ]);
      assert.deepEqual(records[1].argv, ["touch", file]);
      assert.equal(await Deno.stat(file).then(() => "ran", () => "did not run"), "did not run");
      assert.equal(await snapshot(netns), before);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
