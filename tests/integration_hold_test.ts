/**
 * The holder against the kernel (lib/hold/): a queue bound in a test
 * namespace, an iptables NFQUEUE rule on a port's SYNs, clients that
 * connect meanwhile. What is held connects as soon as it is released (not
 * at the client's 1 s SYN retry); a holder that dies fails closed (the
 * kernel drops, the rule still stops traffic, the queue goes); a full
 * queue drops the excess and delivers the rest; two holders take two
 * queues.
 */
import assert from "node:assert/strict";
import {
  boundQueues,
  cli,
  createNetns,
  integration,
  snapshot,
  startServer,
  type TestNetns,
  timedConnect,
} from "./helpers/netns.ts";
import { lineReader } from "./helpers/lines.ts";
import { holdQueue } from "../lib/hold/holder.ts";
import { getLockStatus, lockNetwork, unlockNetwork } from "../mod.ts";

const PORT = 7600;
const CHILD = new URL("./helpers/hold_child.ts", import.meta.url).pathname;

/** Queues the port's SYNs (`-A`) or stops doing so (`-D`). */
async function queueRule(netns: TestNetns, op: "-A" | "-D", queue: number, port = PORT) {
  await netns.run([
    "iptables",
    "-w",
    op,
    "INPUT",
    "-p",
    "tcp",
    "--dport",
    String(port),
    "--syn",
    "-j",
    "NFQUEUE",
    "--queue-num",
    String(queue),
  ]);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

Deno.test({
  name: "hold: a SYN held by the queue connects within 100 ms of the release",
  ...integration,
  async fn() {
    await using netns = await createNetns();
    await using _server = await startServer(netns, [`127.0.0.1:${PORT}`]);
    const holder = await holdQueue(netns.path);
    try {
      await queueRule(netns, "-A", holder.queue);
      const connected = timedConnect(netns, "127.0.0.1", PORT);
      await sleep(500);
      assert.equal(await holder.held(), 1, "the SYN is held");
      await queueRule(netns, "-D", holder.queue);
      const released = Date.now();
      assert.equal(await holder.release(), 1);
      const at = await connected;
      assert.equal(typeof at, "object", `the client connected (${at})`);
      const after = (at as { connected: number }).connected - released;
      assert(after >= -5 && after < 100, `connected ${after} ms after the release`);
      assert.deepEqual(await boundQueues(netns), [], "the queue is gone");
    } finally {
      await holder.close();
    }
  },
});

Deno.test({
  name: "hold: a holder killed mid-lock fails closed: SYNs dropped (no reset), its queue gone",
  ...integration,
  async fn() {
    await using netns = await createNetns();
    await using _server = await startServer(netns, [`127.0.0.1:${PORT}`]);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", "--allow-ffi", CHILD, netns.path],
      stdout: "piped",
      stdin: "null",
    }).spawn();
    const lines = lineReader(child.stdout);
    const first = await lines.next();
    const queue = Number(first?.replace(/^held /, ""));
    assert(Number.isSafeInteger(queue), `the child holds a queue: ${first}`);
    await queueRule(netns, "-A", queue);
    child.kill("SIGKILL");
    await child.status;
    await lines.drain();
    assert.deepEqual(await boundQueues(netns), [], "the queue went with its holder");
    // Its SYN and the retry 1 s later are dropped: the client times out, never refused.
    assert.equal(await timedConnect(netns, "127.0.0.1", PORT, 1.5), "TimeoutError");
    await queueRule(netns, "-D", queue);
    assert.equal(
      typeof await timedConnect(netns, "127.0.0.1", PORT, 1.5),
      "object",
      "the rule gone, it connects",
    );
  },
});

Deno.test({
  name: "hold: a full queue drops the excess and delivers the rest at the release",
  ...integration,
  async fn() {
    await using netns = await createNetns();
    await using _server = await startServer(netns, [`127.0.0.1:${PORT}`]);
    const holder = await holdQueue(netns.path, { maxPackets: 2 });
    try {
      await queueRule(netns, "-A", holder.queue);
      const clients = [0, 1, 2, 3].map(() => timedConnect(netns, "127.0.0.1", PORT));
      await sleep(600);
      assert.equal(await holder.held(), 2, "two SYNs held, the others dropped");
      await queueRule(netns, "-D", holder.queue);
      const released = Date.now();
      assert.equal(await holder.release(), 2);
      const times = await Promise.all(clients);
      assert(times.every((t) => typeof t === "object"), `all connect in the end: ${times}`);
      const after = times.map((t) => (t as { connected: number }).connected - released)
        .sort((a, b) => a - b);
      assert(after[1] < 100, `the two held connect at the release: ${after}`);
      assert(after[2] > 200, `the two dropped wait for their SYN retry: ${after}`);
    } finally {
      await holder.close();
    }
  },
});

/** Receives UDP datagrams on 127.0.0.1:PORT until 1 s passes without one; prints how many, and how many distinct. */
const RECEIVER = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" +
  "s.setsockopt(socket.SOL_SOCKET,33,1<<22)\n" +
  "s.bind(('127.0.0.1',int(__import__('sys').argv[1])))\nprint('ready',flush=True)\n" +
  "s.settimeout(5)\nseen=[]\ntry:\n  while True:\n    seen.append(s.recv(64))\n" +
  "    s.settimeout(1)\nexcept socket.timeout:\n  pass\nprint(len(seen),len(set(seen)),flush=True)";

/** Sends `count` datagrams, numbered, to 127.0.0.1:PORT. */
const SENDER = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" +
  "for i in range(int(sys.argv[2])): s.sendto(str(i).encode(),('127.0.0.1',int(sys.argv[1])))";

Deno.test({
  name: "hold: a release of many held packets (two verdicts at once) delivers every one once",
  ...integration,
  async fn() {
    await using netns = await createNetns();
    const count = 1000;
    const receiver = new Deno.Command("nsenter", {
      args: [`--net=${netns.path}`, "python3", "-c", RECEIVER, String(PORT)],
      stdout: "piped",
    }).spawn();
    const lines = lineReader(receiver.stdout);
    try {
      assert.equal(await lines.next(), "ready");
      const holder = await holdQueue(netns.path);
      try {
        const rule = ["INPUT", "-p", "udp", "--dport", String(PORT), "-j", "NFQUEUE"];
        await netns.run(["iptables", "-w", "-A", ...rule, "--queue-num", String(holder.queue)]);
        await netns.run(["python3", "-c", SENDER, String(PORT), String(count)]);
        assert.equal(await holder.held(), count, "every datagram held");
        await netns.run(["iptables", "-w", "-D", ...rule, "--queue-num", String(holder.queue)]);
        assert.equal(await holder.release(), count);
      } finally {
        await holder.close();
      }
      assert.equal(await lines.next(), `${count} ${count}`, "each delivered, none twice");
      assert.deepEqual(await boundQueues(netns), []);
    } finally {
      await receiver.status;
    }
  },
});

Deno.test({
  name: "hold: two holders in one namespace take two queues, each releases its own",
  ...integration,
  async fn() {
    await using netns = await createNetns();
    await using _a = await startServer(netns, [`127.0.0.1:${PORT}`]);
    await using _b = await startServer(netns, [`127.0.0.1:${PORT + 1}`]);
    const first = await holdQueue(netns.path);
    const second = await holdQueue(netns.path);
    try {
      assert.notEqual(first.queue, second.queue);
      assert.deepEqual((await boundQueues(netns)).sort(), [first.queue, second.queue].sort());
      await queueRule(netns, "-A", first.queue, PORT);
      await queueRule(netns, "-A", second.queue, PORT + 1);
      const a = timedConnect(netns, "127.0.0.1", PORT);
      const b = timedConnect(netns, "127.0.0.1", PORT + 1);
      await sleep(500);
      assert.deepEqual([await first.held(), await second.held()], [1, 1]);
      await queueRule(netns, "-D", first.queue, PORT);
      const released = Date.now();
      assert.equal(await first.release(), 1);
      const at = await a;
      assert(
        typeof at === "object" && at.connected - released < 100,
        `the first's client connected: ${JSON.stringify(at)}`,
      );
      assert.equal(await second.held(), 1, "the second still holds its own");
      await queueRule(netns, "-D", second.queue, PORT + 1);
      assert.equal(await second.release(), 1);
      assert.equal(typeof await b, "object");
      assert.deepEqual(await boundQueues(netns), []);
    } finally {
      await first.close();
      await second.close();
    }
  },
});

const CLIENT = "import socket,sys,time\ns=socket.socket()\ns.settimeout(5)\n" +
  "s.connect(('127.0.0.1',int(sys.argv[1])))\nprint(int(time.time()*1000),flush=True)";

/**
 * `netlock run [--hold] --netns NS -- sh -c ...`: the command starts a
 * client in the namespace in the background (its connect time into a
 * file), waits 0.5 s and prints its own end: how long after the command's
 * end (the unlock's start) the client connected.
 */
async function connectAfterRun(netns: TestNetns, hold: boolean): Promise<number> {
  const out = await Deno.makeTempFile();
  try {
    const script = `nsenter --net=${netns.path} -- python3 -c "$0" ${PORT} >${out} 2>&1 & ` +
      "sleep 0.5; date +%s%3N";
    const result = await cli(
      ["run", ...(hold ? ["--hold"] : []), "--netns", netns.path, "--", "sh", "-c", script, CLIENT],
      { permissions: ["--allow-run=nsenter,sh", "--allow-ffi"] },
    );
    assert.equal(result.code, 0, result.stderr);
    if (hold) assert.match(result.stderr, /let through 1 held packet/);
    const ended = Number(result.stdout.trim());
    for (let i = 0; i < 60; i++) {
      const text = (await Deno.readTextFile(out)).trim();
      if (/^\d+$/.test(text)) return Number(text) - ended;
      if (text) throw new Error(`the client failed: ${text}`);
      await sleep(50);
    }
    throw new Error("the client never connected");
  } finally {
    await Deno.remove(out);
  }
}

Deno.test({
  name:
    "run --hold: a client that connects during the lock connects at the unlock; without, at its SYN retry",
  ...integration,
  async fn() {
    await using netns = await createNetns();
    await using _server = await startServer(netns, [`127.0.0.1:${PORT}`]);
    const held = await connectAfterRun(netns, true);
    assert(held >= 0 && held < 100, `held: connected ${held} ms after the command ended`);
    const dropped = await connectAfterRun(netns, false);
    assert(dropped > 300, `dropped: connected ${dropped} ms after the command ended`);
    assert.deepEqual(await boundQueues(netns), [], "no queue left");
  },
});

Deno.test({
  name: "run --hold without --allow-ffi: exit 2, one error line, nothing applied",
  ...integration,
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const result = await cli(["run", "--hold", "--netns", netns.path, "--", "true"], {
      permissions: ["--allow-run=nsenter,true"],
    });
    assert.equal(result.code, 2);
    assert.equal(
      result.stderr,
      "error: --hold holds packets in the kernel's queue through libc: add --allow-ffi\n",
    );
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  name:
    "hold: status and list show a namespace lock that holds, and its queue (library, --json, table)",
  ...integration,
  async fn() {
    await using netns = await createNetns();
    const holder = await holdQueue(netns.path);
    try {
      const target = { netns: netns.path };
      await lockNetwork(target, { queue: holder.queue });
      const status = await getLockStatus(target);
      assert.equal(status.state, "locked");
      assert.equal(status.queue, holder.queue);
      const json = await cli(["status", "--json", "--netns", netns.path]);
      assert.equal(json.code, 0, json.stderr);
      assert.equal(JSON.parse(json.stdout).queue, holder.queue);
      const human = await cli(["status", "--netns", netns.path]);
      assert.match(human.stdout, new RegExp(`holding \\(queue ${holder.queue}\\)`));
      // list: the queue in its JSON and in its table's last column.
      const listed = await cli(["list", "--json", "--netns", netns.path]);
      assert.equal(listed.code, 0, listed.stderr);
      assert.equal(JSON.parse(listed.stdout).queue, holder.queue);
      const table = (await cli(["list", "--netns", netns.path])).stdout.split("\n");
      assert.match(table[1], new RegExp(` netns +NETLOCK +iptables .* queue ${holder.queue}$`));
      await unlockNetwork(target);
      // A lock that drops says nothing of a queue.
      await lockNetwork(target);
      assert.equal((await getLockStatus(target)).queue, undefined);
      const dropping = await cli(["list", "--json", "--netns", netns.path]);
      assert.equal(JSON.parse(dropping.stdout).queue, undefined);
      assert.match((await cli(["list", "--netns", netns.path])).stdout.split("\n")[1], / -$/);
      await unlockNetwork(target);
    } finally {
      await holder.close();
    }
  },
});
