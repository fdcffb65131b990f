import assert from "node:assert/strict";
import { plainHookTask } from "../lib/criu/environment.ts";
import { parseDumpedConnections, parseDumpedSockets } from "../lib/criu/dumped_sockets.ts";
import { openChannel } from "../lib/criu/helper/channel.ts";
import { renderPlanFile } from "../lib/criu/plan.ts";

const env = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("plainHookTask() locks on network-lock and unlocks on network-unlock", () => {
  assert.deepEqual(
    plainHookTask(
      env({
        CRTOOLS_SCRIPT_ACTION: "network-lock",
        CRTOOLS_INIT_PID: "42",
        NETLOCK_BACKEND: "auto",
        NETLOCK_NAME: "CKPT",
        NETLOCK_MARK: "0x1",
      }),
    ),
    { task: "lock", pid: 42, options: { backend: "auto", name: "CKPT", mark: 1 } },
  );
  assert.equal(
    plainHookTask(env({ CRTOOLS_SCRIPT_ACTION: "network-unlock", CRTOOLS_INIT_PID: "42" })).task,
    "unlock",
  );
});

Deno.test("plainHookTask() ignores every other action, even without a PID", () => {
  for (
    const action of [
      "pre-dump",
      "post-dump",
      "pre-restore",
      "setup-namespaces",
      "post-restore",
      "pre-resume",
      "post-resume",
      "",
    ]
  ) {
    assert.deepEqual(plainHookTask(env({ CRTOOLS_SCRIPT_ACTION: action })), { task: "none" });
  }
});

Deno.test("plainHookTask() refuses a bad PID (INVALID_ENVIRONMENT) and bad options (TypeError)", () => {
  for (const pid of ["", "0", "abc", "12;reboot", "0x10"]) {
    assert.throws(
      () => plainHookTask(env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: pid })),
      {
        code: "INVALID_ENVIRONMENT",
      },
    );
  }
  assert.throws(
    () =>
      plainHookTask(
        env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "1", NETLOCK_NAME: "a b" }),
      ),
    TypeError,
  );
  assert.throws(
    () =>
      plainHookTask(
        env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "1", NETLOCK_MARK: "-1" }),
      ),
    TypeError,
  );
});

// files.img: the two magics, then entries `u32 size` + file_entry (type 4: an inet socket, its
// inet_sk_entry in field 4).
const varint = (n: number): number[] =>
  n < 128 ? [n] : [(n & 0x7f) | 0x80, ...varint(Math.floor(n / 128))];
const field = (f: number, n: number) => [...varint(f * 8), ...varint(n)];
const bytes = (f: number, b: number[]) => [...varint(f * 8 + 2), ...varint(b.length), ...b];
const MAGICS = [0x19, 0x43, 0x56, 0x54, 0x38, 0x31, 0x30, 0x56];
const isk = (family: number, state: number, src: number[], dst: number[], ports: number[]) => [
  ...field(1, 3),
  ...field(2, 99),
  ...field(3, family),
  ...field(4, 1),
  ...field(5, 6),
  ...field(6, state),
  ...field(7, ports[0]),
  ...field(8, ports[1]),
  ...src.flatMap((word) => field(11, word)),
  ...dst.flatMap((word) => field(12, word)),
];
const entry = (type: number, sk?: number[]) => {
  const body = [...field(1, type), ...field(2, 7), ...(sk ? bytes(4, sk) : [])];
  return [body.length, 0, 0, 0, ...body];
};

Deno.test("parseDumpedConnections() reads the TCP connections of a dump's files.img", () => {
  // A TCP socket 127.0.0.1:7999 -> 127.0.0.1:56054 (established), a listener
  // (left out), and a pipe (left out).
  const loopback = 0x0100007f; // 127.0.0.1 as CRIU keeps it (network order in a little-endian word)
  const image = new Uint8Array([
    ...MAGICS,
    ...entry(4, isk(2, 1, [loopback], [loopback], [7999, 56054])),
    ...entry(4, isk(2, 10, [loopback], [0], [7999, 0])),
    ...entry(2),
  ]);
  assert.deepEqual(parseDumpedConnections(image), [
    { family: "ipv4", local: "127.0.0.1", localPort: 7999, remote: "127.0.0.1", remotePort: 56054 },
  ]);
  assert.throws(() => parseDumpedConnections(new Uint8Array(8)), /not a CRIU files.img/);
  assert.throws(
    () => parseDumpedConnections(new Uint8Array([...MAGICS, 200, 0, 0, 0, 8, 4])),
    /truncated/,
  );
});

Deno.test("parseDumpedConnections() reads IPv6 addresses, an IPv4-mapped one as IPv4", () => {
  // ::1 -> 2001:db8::5, and ::ffff:198.18.0.1 -> ::ffff:198.18.0.2 (words in network order).
  const v6 = (bytes: number[]) =>
    [0, 4, 8, 12].map((i) =>
      bytes[i] + bytes[i + 1] * 0x100 + bytes[i + 2] * 0x10000 + bytes[i + 3] * 0x1000000
    );
  const ip = (text: number[]) => v6([...Array(16 - text.length).fill(0), ...text]);
  const doc = v6([0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 5]);
  const mapped = (last: number) => ip([0xff, 0xff, 198, 18, 0, last]);
  const image = new Uint8Array([
    ...MAGICS,
    ...entry(4, isk(10, 1, ip([1]), doc, [8080, 40000])),
    ...entry(4, isk(10, 1, mapped(1), mapped(2), [8080, 40001])),
  ]);
  assert.deepEqual(parseDumpedConnections(image), [
    {
      family: "ipv6",
      local: "0:0:0:0:0:0:0:1",
      localPort: 8080,
      remote: "2001:db8:0:0:0:0:0:5",
      remotePort: 40000,
    },
    {
      family: "ipv4",
      local: "198.18.0.1",
      localPort: 8080,
      remote: "198.18.0.2",
      remotePort: 40001,
    },
  ]);
});

Deno.test("parseDumpedSockets() also reads the dump's listeners, a wildcard one as it is", () => {
  const loopback = 0x0100007f;
  const image = new Uint8Array([
    ...MAGICS,
    ...entry(4, isk(2, 1, [loopback], [loopback], [7999, 56054])),
    ...entry(4, isk(2, 10, [loopback], [0], [7999, 0])),
    ...entry(4, isk(10, 10, [0, 0, 0, 0], [0, 0, 0, 0], [8443, 0])),
    // A UDP socket (protocol 17) is no listener.
    ...entry(4, [...isk(2, 7, [0], [0], [53, 0]), ...field(5, 17)]),
  ]);
  assert.deepEqual(parseDumpedSockets(image), {
    connections: [
      {
        family: "ipv4",
        local: "127.0.0.1",
        localPort: 7999,
        remote: "127.0.0.1",
        remotePort: 56054,
      },
    ],
    listeners: [
      { family: "ipv4", local: "127.0.0.1", localPort: 7999 },
      { family: "ipv6", local: "0:0:0:0:0:0:0:0", localPort: 8443 },
    ],
  });
});

Deno.test("the helper's channel: a request loop stopped mid-read loses no line to the next one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netlock-channel-" });
  try {
    for (const fifo of ["cmd", "reply"]) {
      const made = await new Deno.Command("mkfifo", { args: [`${dir}/${fifo}`] }).output();
      assert.ok(made.success);
    }
    const channel = await openChannel(dir);
    const writer = await Deno.open(`${dir}/cmd`, { write: true });
    const write = (line: string) => writer.write(new TextEncoder().encode(line));
    // The first loop reads one request, then waits on the FIFO until CRIU is "gone".
    const stop = new AbortController();
    const first: string[] = [];
    const loop = (async () => {
      for await (const line of channel.requests(stop.signal)) first.push(line);
    })();
    await write("post-dump 42\n");
    await new Promise((resolve) => setTimeout(resolve, 50));
    stop.abort();
    await loop;
    // Its read is still pending: what comes next goes to the next loop.
    await write("release 42\nexit\n");
    const second: string[] = [];
    for await (const line of channel.requests(AbortSignal.timeout(2_000))) {
      second.push(line);
      if (line === "exit") break;
    }
    assert.deepEqual([first, second], [["post-dump 42"], ["release 42", "exit"]]);
    writer.close();
    await channel.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the restore plan names the helper that holds for the restore, after the keys it had", () => {
  assert.equal(
    renderPlanFile({ tree: "host", backend: "iptables", pid: 42, finish: true }),
    "version=1\nkind=host\nbackend=iptables\npid=42\nfinish=1\n",
  );
  assert.equal(
    renderPlanFile({
      tree: "host",
      backend: "iptables",
      pid: 42,
      finish: true,
      hold: "/run/netlock/criu-7-8.abc",
    }),
    "version=1\nkind=host\nbackend=iptables\npid=42\nfinish=1\nhold=/run/netlock/criu-7-8.abc\n",
  );
});
