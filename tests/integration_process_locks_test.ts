/**
 * The locks made for one process, on a tree whose children hold the
 * connections and a peer outside it that keeps sending: connection mode
 * covers every process of the tree; cgroup mode covers every socket of the
 * tree's cgroup, connections made later and UDP included. netlock runs
 * inside the namespace (a host, as far as it can tell). What would cut
 * netlock off is refused; a process that exits while it is being locked
 * leaves nothing locked.
 */
import assert from "node:assert/strict";
import {
  cli,
  cliInside,
  createNetns,
  fakeTools,
  integration,
  probe,
  sh,
  snapshot,
  type TestNetns,
} from "./helpers/netns.ts";
import { type Cgroup, createCgroup, startPeer, startTree } from "./helpers/tree.ts";
import { type LineReader, lineReader } from "./helpers/lines.ts";

const PORT = 7500;
const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** Runs the CLI inside the namespace, as a member of `cgroup`. */
function cliInCgroup(netns: TestNetns, cgroup: Cgroup, args: string[]) {
  return sh([
    "sh",
    "-c",
    'echo $$ >"$0/cgroup.procs" && exec "$@"',
    cgroup.dir,
    "nsenter",
    `--net=${netns.path}`,
    "--",
    Deno.execPath(),
    "run",
    "--no-config",
    "--allow-run=nsenter",
    CLI,
    ...args,
  ], { NO_COLOR: "1" });
}

const jsonOf = (text: string) => JSON.parse(text.trim().split("\n").at(-1)!);

for (const backend of ["iptables", "nftables"]) {
  Deno.test({
    ...integration,
    name: `${backend}: connection mode locks the connections of every process of the tree`,
    async fn() {
      await using netns = await createNetns();
      const at = { netns, address: "127.0.0.1" };
      const before = await snapshot(netns);
      await using tree = await startTree(at, PORT, 5, 2);
      await using peer = await startPeer(netns, at, PORT, 5);
      await peer.flowing();

      const locked = await cliInside(netns, [
        "lock",
        "--json",
        "-b",
        backend,
        "--mode",
        "connections",
        String(tree.pid),
      ]);
      assert.equal(locked.code, 0, locked.stderr);
      // The root holds none: its two children hold all five.
      assert.equal(JSON.parse(locked.stdout).connections, 5);
      const held = peer.progress();
      await new Promise((resolve) => setTimeout(resolve, 600));
      assert.equal(peer.progress(), held, "no echo while locked");

      const unlocked = await cliInside(netns, ["unlock", String(tree.pid)]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      await peer.flowing();
      const verdict = await peer.stop();
      assert.deepEqual([verdict.ok, verdict.resets, verdict.errors], [true, 0, []]);
      assert.equal(await snapshot(netns), before);
    },
  });
}

Deno.test({
  ...integration,
  name: "cgroup mode: every socket of the tree's cgroup, new connections and UDP too",
  async fn() {
    await using netns = await createNetns();
    await using cgroup = await createCgroup();
    const at = { netns, address: "127.0.0.1" };
    const before = await snapshot(netns);
    await using tree = await startTree(at, PORT, 3, 2, cgroup);
    await using peer = await startPeer(netns, at, PORT, 3);
    // A UDP echo in the same cgroup.
    const { child: udp, output } = await startUdpEcho(netns, cgroup);
    try {
      await peer.flowing();
      const answer = await udpAsk(netns);
      const exited = await Promise.race([udp.status, Promise.resolve(undefined)]);
      const why = exited ? await new Response(udp.stderr).text() : "";
      assert.equal(answer, "pong", `the UDP echo answers (${JSON.stringify(exited)} ${why})`);

      const pid = String(tree.pid);
      const locked = await cliInside(netns, ["lock", "--json", "--mode", "cgroup", pid]);
      assert.equal(locked.code, 0, locked.stderr);
      const report = JSON.parse(locked.stdout);
      assert.deepEqual([report.mode, report.backend], ["cgroup", "nftables"]);
      const held = peer.progress();
      await new Promise((resolve) => setTimeout(resolve, 600));
      assert.equal(peer.progress(), held, "no echo while locked");
      assert.equal(await probe(netns, "127.0.0.1", PORT, 700), "timeout", "a new connection too");
      assert.equal(await udpAsk(netns), "timeout", "UDP too");

      const status = await cliInside(netns, ["status", "--json", pid]);
      assert.equal(status.code, 0, status.stdout);
      assert.deepEqual(JSON.parse(status.stdout).kinds, ["cgroup"]);
      const listed = await cliInside(netns, ["list", "--json"]);
      assert.deepEqual(
        listed.stdout.trim().split("\n").map((line) => JSON.parse(line)).map((
          l,
        ) => [l.kind, l.pid]),
        [["cgroup", tree.pid]],
      );
      const again = await cliInside(netns, ["lock", "--json", "--mode", "cgroup", pid]);
      assert.equal(JSON.parse(again.stdout).changed, false, "idempotent");

      const unlocked = await cliInside(netns, ["unlock", "--json", pid]);
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.deepEqual(JSON.parse(unlocked.stdout).kinds, ["cgroup"]);
      await peer.flowing();
      assert.equal(await udpAsk(netns), "pong");
      const verdict = await peer.stop();
      assert.deepEqual([verdict.ok, verdict.resets, verdict.errors], [true, 0, []]);
      assert.equal(await snapshot(netns), before);
    } finally {
      try {
        udp.kill("SIGKILL");
      } catch {
        // Exited already: the assertion that failed says why.
      }
      await udp.status;
      await output.drain();
      await udp.stderr.cancel().catch(() => {});
    }
  },
});

Deno.test({
  ...integration,
  name: "cgroup mode is refused for the root cgroup, netlock's own cgroup and with -b iptables",
  async fn() {
    await using netns = await createNetns();
    await using cgroup = await createCgroup();
    const at = { netns, address: "127.0.0.1" };
    const before = await snapshot(netns);
    await using inRoot = await startTree(at, PORT, 0, 0);
    await using inCgroup = await startTree(at, PORT + 1, 0, 0, cgroup);
    const root = await cliInside(netns, ["lock", "--json", "--mode", "cgroup", String(inRoot.pid)]);
    assert.equal(root.code, 1);
    assert.equal(JSON.parse(root.stdout).error.code, "CGROUP_REFUSED");
    assert.match(root.stderr, /it is in the root cgroup/);
    const own = await cliInCgroup(netns, cgroup, [
      "lock",
      "--mode",
      "cgroup",
      String(inCgroup.pid),
    ]);
    assert.equal(own.code, 1);
    assert.match(own.stderr, /netlock itself runs in its cgroup/);
    const iptables = await cli([
      "lock",
      "-b",
      "iptables",
      "--mode",
      "cgroup",
      String(inCgroup.pid),
    ]);
    assert.equal(iptables.code, 2);
    assert.match(iptables.stderr, /--mode cgroup is an nftables lock/);
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "a cgroup removed while locked: unlock by name still removes its lock",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const cgroup = await createCgroup();
    const tree = await startTree({ netns, address: "127.0.0.1" }, PORT, 0, 0, cgroup);
    const pid = String(tree.pid);
    assert.equal((await cliInside(netns, ["lock", "--mode", "cgroup", pid])).code, 0);
    await tree[Symbol.asyncDispose]();
    await cgroup[Symbol.asyncDispose]();
    assert.equal(await Deno.stat(cgroup.dir).then(() => "there", () => "gone"), "gone");
    const unlocked = await cliInside(netns, ["unlock", "--json", pid]);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    assert.deepEqual(JSON.parse(unlocked.stdout).kinds, ["cgroup"]);
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "a tree that holds netlock itself is refused unless --force",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    // The shell stays netlock's parent (the `; :` keeps it from exec'ing).
    const run = (force: string) =>
      sh([
        "nsenter",
        `--net=${netns.path}`,
        "--",
        "sh",
        "-c",
        `"$0" run --no-config --allow-run=nsenter ${CLI} lock --json --mode connections ${force} $$; :`,
        Deno.execPath(),
      ], { NO_COLOR: "1" });
    const refused = await run("");
    assert.equal(JSON.parse(refused.stdout).ok, false);
    assert.match(refused.stderr, /netlock itself is in its tree .*add --force/);
    assert.equal(await snapshot(netns), before, "nothing applied");
    const forced = await run("--force");
    assert.equal(jsonOf(forced.stdout).ok, true, forced.stderr);
    const listed = await cliInside(netns, ["list", "--json"]);
    const pid = JSON.parse(listed.stdout).pid;
    assert.equal((await cliInside(netns, ["unlock", String(pid)])).code, 0);
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "a process that exits while it is being locked: one clear line, nothing locked",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const at = { netns, address: "127.0.0.1" };
    await using tree = await startTree(at, PORT, 2, 1);
    await using _peer = await startPeer(netns, at, PORT, 2);
    // nft kills the tree's root just before it applies the lock.
    await using fake = await fakeTools({
      nft:
        `#!/bin/sh\nkill -KILL ${tree.pid} 2>/dev/null\nsleep 0.2\nPATH=${PATH_WITHOUT_FAKES} exec nft "$@"\n`,
    });
    const result = await sh(
      [
        "nsenter",
        `--net=${netns.path}`,
        "--",
        Deno.execPath(),
        "run",
        "--no-config",
        "--allow-run=nsenter",
        CLI,
        "lock",
        "-b",
        "nftables",
        "--mode",
        "connections",
        String(tree.pid),
      ],
      { NO_COLOR: "1", PATH: fake.path },
    );
    assert.equal(result.code, 1, result.stderr);
    assert.match(
      result.stderr,
      new RegExp(`^error: .*process ${tree.pid} exited while its connections were being locked`),
    );
    assert.equal(await snapshot(netns), before);
  },
});

const PATH_WITHOUT_FAKES = `${Deno.env.get("PATH")}:/usr/sbin:/sbin`;

/** A UDP echo on 127.0.0.1:7600 in the cgroup. */
async function startUdpEcho(
  netns: TestNetns,
  cgroup: Cgroup,
): Promise<{ child: Deno.ChildProcess; output: LineReader }> {
  const echo = "import os,socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" +
    "s.bind(('127.0.0.1',7600))\nprint('ready',flush=True)\n" +
    "while True:\n d,a=s.recvfrom(100)\n s.sendto(b'pong',a)\n";
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      'echo $$ >"$0/cgroup.procs" && exec "$@"',
      cgroup.dir,
      "nsenter",
      `--net=${netns.path}`,
      "--",
      "python3",
      "-c",
      echo,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Whole lines, and the pipe drained to its end: never closed under the child.
  const output = lineReader(child.stdout);
  assert.equal(await output.next(), "ready", "the UDP echo started");
  output.drain();
  return { child, output };
}

/** One datagram to the UDP echo: "pong", or "timeout" after 700 ms. */
async function udpAsk(netns: TestNetns): Promise<string> {
  const ask =
    "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(0.7)\n" +
    "s.sendto(b'ping',('127.0.0.1',7600))\n" +
    "try:\n print(s.recv(100).decode())\nexcept OSError:\n print('timeout')\n";
  const result = await sh(["nsenter", `--net=${netns.path}`, "--", "python3", "-c", ask]);
  return result.stdout.trim();
}

Deno.test({
  ...integration,
  name: "iptables: many connections make a tree of chains: locked, idempotent, counted, removed",
  async fn() {
    await using netns = await createNetns();
    const at = { netns, address: "127.0.0.1" };
    const before = await snapshot(netns);
    await using tree = await startTree(at, PORT, 100, 2);
    await using peer = await startPeer(netns, at, PORT, 100);
    await peer.flowing();
    const pid = String(tree.pid);
    const lock = () =>
      cliInside(netns, ["lock", "--json", "-b", "iptables", "--mode", "connections", pid]);
    const first = await lock();
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual([JSON.parse(first.stdout).connections, JSON.parse(first.stdout).changed], [
      100,
      true,
    ]);
    const saved = (await netns.run(["iptables-save"])).stdout;
    assert.ok(
      saved.includes(`:NETLOCK-c${pid}.0 - [0:0]`),
      "the tree's chains are in iptables-save",
    );
    // Loopback's pair of addresses: its chain lets other ports return first.
    assert.ok(
      saved.includes(`-A NETLOCK-c${pid}.0 -p tcp -m multiport ! --ports ${PORT} -j RETURN\n`),
      saved,
    );
    const again = await lock();
    assert.equal(JSON.parse(again.stdout).changed, false, "the same connections: nothing changes");
    const status = await cliInside(netns, ["status", "--json", pid]);
    assert.equal(JSON.parse(status.stdout).connections, 100);
    const listed = await cliInside(netns, ["list", "--json"]);
    assert.deepEqual(
      listed.stdout.trim().split("\n").map((line) => JSON.parse(line)).map((
        l,
      ) => [l.name, l.connections]),
      [[`NETLOCK-c${pid}`, 100]],
    );
    const held = peer.progress();
    await new Promise((resolve) => setTimeout(resolve, 600));
    assert.equal(peer.progress(), held, "no echo while locked");
    assert.equal((await cliInside(netns, ["unlock", pid])).code, 0);
    await peer.flowing();
    assert.deepEqual((await peer.stop()).errors, []);
    assert.equal(await snapshot(netns), before);
  },
});
