import assert from "node:assert/strict";
import { planCriuHook } from "../lib/criu/hook.ts";
import { parseDumpedConnections } from "../lib/criu/dumped_sockets.ts";

const env = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("planCriuHook() locks on network-lock and unlocks on network-unlock", () => {
  assert.deepEqual(
    planCriuHook(
      env({
        CRTOOLS_SCRIPT_ACTION: "network-lock",
        CRTOOLS_INIT_PID: "42",
        NETLOCK_BACKEND: "auto",
        NETLOCK_NAME: "CKPT",
        NETLOCK_MARK: "0x1",
      }),
    ),
    { action: "lock", pid: 42, options: { backend: "auto", name: "CKPT", mark: 1 } },
  );
  assert.equal(
    planCriuHook(env({ CRTOOLS_SCRIPT_ACTION: "network-unlock", CRTOOLS_INIT_PID: "42" })).action,
    "unlock",
  );
});

Deno.test("planCriuHook() ignores every other action, even without a PID", () => {
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
    assert.deepEqual(planCriuHook(env({ CRTOOLS_SCRIPT_ACTION: action })), { action: "none" });
  }
});

Deno.test("planCriuHook() refuses a bad PID (INVALID_ENVIRONMENT) and bad options (TypeError)", () => {
  for (const pid of ["", "0", "abc", "12;reboot", "0x10"]) {
    assert.throws(
      () => planCriuHook(env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: pid })),
      {
        code: "INVALID_ENVIRONMENT",
      },
    );
  }
  assert.throws(
    () =>
      planCriuHook(
        env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "1", NETLOCK_NAME: "a b" }),
      ),
    TypeError,
  );
  assert.throws(
    () =>
      planCriuHook(
        env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "1", NETLOCK_MARK: "-1" }),
      ),
    TypeError,
  );
});

Deno.test("parseDumpedConnections() reads the TCP connections of a dump's files.img", () => {
  // files.img: the two magics, then entries `u32 size` + file_entry; a TCP socket 127.0.0.1:7999 ->
  // 127.0.0.1:56054 (established), a listener (left out), and a pipe (left out).
  const varint = (n: number): number[] => n < 128 ? [n] : [(n & 0x7f) | 0x80, ...varint(n >>> 7)];
  const field = (f: number, n: number) => [...varint(f * 8), ...varint(n)];
  const bytes = (f: number, b: number[]) => [...varint(f * 8 + 2), ...varint(b.length), ...b];
  const loopback = 0x0100007f; // 127.0.0.1 as CRIU keeps it (network order in a little-endian word)
  const isk = (state: number, src: number, dst: number) => [
    ...field(1, 3),
    ...field(2, 99),
    ...field(3, 2),
    ...field(4, 1),
    ...field(5, 6),
    ...field(6, state),
    ...field(7, src),
    ...field(8, dst),
    ...field(11, loopback),
    ...field(12, loopback),
  ];
  const entry = (type: number, sk?: number[]) => {
    const body = [...field(1, type), ...field(2, 7), ...(sk ? bytes(4, sk) : [])];
    return [body.length, 0, 0, 0, ...body];
  };
  const image = new Uint8Array([
    0x19,
    0x43,
    0x56,
    0x54,
    0x38,
    0x31,
    0x30,
    0x56,
    ...entry(4, isk(1, 7999, 56054)),
    ...entry(4, isk(10, 7999, 0)),
    ...entry(2),
  ]);
  assert.deepEqual(parseDumpedConnections(image), [
    { family: "ipv4", local: "127.0.0.1", localPort: 7999, remote: "127.0.0.1", remotePort: 56054 },
  ]);
  assert.throws(() => parseDumpedConnections(new Uint8Array(8)), /not a CRIU files.img/);
});
