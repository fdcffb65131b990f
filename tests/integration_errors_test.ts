/**
 * Failures the target causes: exit 1, one clear line, nothing applied.
 */
import assert from "node:assert/strict";
import {
  cli,
  cliInside,
  createNetns,
  integration,
  snapshot,
  startSleeper,
} from "./helpers/netns.ts";

Deno.test({
  ...integration,
  name: "a PID that does not exist: lock, status and unlock exit 1 with one line and a way on",
  async fn() {
    // pid_max is at most 4194304, so PIDs go up to 4194303: this one never exists.
    const result = await cli(["lock", "4194304"]);
    assert.equal(result.code, 1);
    assert.equal(result.stderr, "error: Cannot lock network of process 4194304: no such process\n");
    const json = await cli(["unlock", "--mode", "netns", "--json", "4194304"]);
    assert.equal(json.code, 1);
    assert.deepEqual(JSON.parse(json.stdout), {
      command: "unlock",
      target: { pid: 4194304 },
      ok: false,
      error: {
        code: "NO_SUCH_TARGET",
        message: "Cannot unlock network of process 4194304: no such process",
      },
    });
    // Without a mode, status and unlock look for a connection lock the process left in
    // netlock's own namespace; there is none, so: no such process, and where else to look.
    for (const command of ["status", "unlock"]) {
      const gone = await cli([command, "4194304"]);
      assert.equal(gone.code, 1, `${command}: ${gone.stdout}`);
      assert.equal(gone.stdout, "");
      const lines = gone.stderr.split("\n").filter(Boolean);
      assert.equal(lines.length, 1, gone.stderr);
      assert.match(lines[0], /^error: Cannot .* of process 4194304: no such process/);
      assert.match(lines[0], /netlock list --netns PATH/);
      assert.match(lines[0], /netlock unlock --all --netns PATH/);
    }
  },
});

Deno.test({
  ...integration,
  name: "--userns into netlock's own user namespace: the error names that cause",
  async fn() {
    await using netns = await createNetns();
    await using sleeper = await startSleeper(netns);
    const result = await cli(["lock", "--userns", String(sleeper.pid)]);
    assert.equal(result.code, 1);
    assert.equal(
      result.stderr,
      `error: Cannot lock network of process ${sleeper.pid}: --userns: process ${sleeper.pid} ` +
        "shares netlock's own user namespace (--userns is for a process in another one, " +
        "such as a rootless container's)\n",
    );
  },
});

Deno.test({
  ...integration,
  name: "--netns paths that are not namespaces: exit 1 with the reason",
  async fn() {
    const missing = await cli(["lock", "--netns", "netlock-no-such-namespace"]);
    assert.equal(missing.code, 1);
    assert.equal(
      missing.stderr,
      "error: Cannot lock network of namespace /run/netns/netlock-no-such-namespace: " +
        "no such namespace file /run/netns/netlock-no-such-namespace\n",
    );
    for (const path of ["/etc/hostname", "/tmp", "/dev/zero"]) {
      const result = await cli(["lock", "--netns", path]);
      assert.equal(result.code, 1, path);
      assert.equal(
        result.stderr,
        `error: Cannot lock network of namespace ${path}: ${path} is not a network namespace\n`,
      );
    }
  },
});

Deno.test({
  ...integration,
  name: "netlock's own namespace: auto picks connection mode, --mode netns needs --force",
  async fn() {
    // netlock runs inside a namespace made for the test, which is then its own:
    // the machine's own namespace is never a target, not even of a dry run.
    await using netns = await createNetns();
    await using sleeper = await startSleeper(netns);
    const pid = String(sleeper.pid);
    const before = await snapshot(netns);
    const auto = await cliInside(netns, ["lock", "--dry-run", "--json", pid]);
    assert.equal(auto.code, 0, auto.stderr);
    assert.equal(JSON.parse(auto.stdout).mode, "connections");
    const refused = await cliInside(netns, ["lock", "--mode", "netns", "--json", pid]);
    assert.equal(refused.code, 1);
    assert.equal(JSON.parse(refused.stdout).error.code, "OWN_NAMESPACE");
    assert.match(refused.stderr, /add --force/);
    assert.equal(refused.stderr.split("\n").length, 2, "one line");
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "several targets: each reported; one failure makes the exit 1 and leaves the others whole",
  async fn() {
    await using a = await createNetns();
    await using b = await createNetns();
    const result = await cli([
      "lock",
      "--json",
      "--netns",
      a.name,
      "--netns",
      "netlock-missing",
      "--netns",
      b.name,
    ]);
    assert.equal(result.code, 1);
    const lines = result.stdout.trim().split("\n").map((line) => JSON.parse(line));
    assert.deepEqual(lines.map((line) => line.ok), [true, false, true]);
    assert.equal((await cli(["status", "--netns", a.name, "--netns", b.name])).code, 0);
    const status = await cli(["status", "--netns", a.name, "--netns", "netlock-missing"]);
    assert.equal(status.code, 1);
    const unlocked = await cli(["unlock", "-q", "--netns", a.name, "--netns", b.name]);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    assert.equal(unlocked.stdout, "");
    assert.equal((await cli(["status", "--netns", a.name])).code, 3);
  },
});

Deno.test({
  ...integration,
  name: "bad input against a real namespace applies nothing",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const attempts = [
      ["lock", "--mark", "0xC114\n-A INPUT -j ACCEPT", "--netns", netns.name],
      ["lock", "--name", "X\nCOMMIT\n*filter", "--netns", netns.name],
      ["lock", "--name", "a;reboot", "--netns", netns.name],
      ["lock", "--backend", "foo", "--netns", netns.name],
      ["lock", "--ipv6", "maybe", "--netns", netns.name],
      ["lock", "--netns", netns.name, "abc"],
      ["lock", "--netns", netns.name, "--timeout", "0"],
    ];
    for (const args of attempts) {
      const result = await cli(args);
      assert.equal(result.code, 2, JSON.stringify(args));
    }
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "fifty namespaces are locked and unlocked in one call",
  async fn() {
    const namespaces = [];
    try {
      for (let i = 0; i < 50; i++) namespaces.push(await createNetns());
      const args = namespaces.flatMap((netns) => ["--netns", netns.name]);
      const locked = await cli(["lock", "--json", ...args]);
      assert.equal(locked.code, 0, locked.stderr);
      const lines = locked.stdout.trim().split("\n").map((line) => JSON.parse(line));
      assert.equal(lines.length, 50);
      assert.ok(lines.every((line) => line.ok && line.changed));
      assert.deepEqual(lines.map((line) => line.target.path), namespaces.map((n) => n.path));
      assert.equal((await cli(["status", "-q", ...args])).code, 0);
      const unlocked = await cli(["unlock", "--json", ...args]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.equal(unlocked.stdout.trim().split("\n").length, 50);
      for (const netns of namespaces) {
        assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "", netns.name);
      }
    } finally {
      for (const netns of namespaces) await netns[Symbol.asyncDispose]();
    }
  },
});
