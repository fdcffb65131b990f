import assert from "node:assert/strict";
import { NetlockError } from "../lib/errors.ts";
import { errorCode, humanSuccess, jsonFailure, jsonSuccess } from "../lib/report.ts";
import type { LockStatus, OperationResult } from "../lib/types.ts";

const RESULT: OperationResult = {
  target: { pid: 1234, netns: "net:[4026532456]" },
  locked: true,
  changed: true,
  mode: "netns",
  backend: "iptables",
  families: ["ipv4", "ipv6"],
  name: "NETLOCK",
  mark: 0xC114,
  connections: 0,
  durationMs: 12.54,
};

Deno.test("jsonSuccess() prints the SPEC's fields in the SPEC's order", () => {
  assert.equal(
    jsonSuccess("lock", RESULT),
    '{"command":"lock","target":{"pid":1234,"netns":"net:[4026532456]"},"ok":true,' +
      '"locked":true,"changed":true,"mode":"netns","backend":"iptables",' +
      '"families":["ipv4","ipv6"],"name":"NETLOCK","mark":"0xc114","connections":0,' +
      '"durationMs":12.5}',
  );
});

Deno.test("jsonSuccess() adds the state for status", () => {
  const status: LockStatus = { ...RESULT, locked: false, changed: false, state: "partial" };
  assert.equal(JSON.parse(jsonSuccess("status", status)).state, "partial");
});

Deno.test("jsonFailure() carries the stable code and the one-line message", () => {
  const line = jsonFailure("lock", { path: "/run/netns/x" }, new NetlockError("TIMEOUT", "a\nb"));
  assert.deepEqual(JSON.parse(line), {
    command: "lock",
    target: { path: "/run/netns/x" },
    ok: false,
    error: { code: "TIMEOUT", message: "a b" },
  });
  assert.equal(errorCode(new RangeError("x")), "INVALID_ARGUMENT");
});

Deno.test("humanSuccess() says what happened in one line", () => {
  assert.equal(
    humanSuccess("lock", RESULT),
    "locked process 1234 (net:[4026532456]): iptables, ipv4+ipv6, chain NETLOCK",
  );
  assert.equal(
    humanSuccess("lock", { ...RESULT, changed: false }),
    "process 1234 (net:[4026532456]) was already locked (iptables, ipv4+ipv6, chain NETLOCK)",
  );
  assert.equal(
    humanSuccess("status", { ...RESULT, state: "unlocked" } as LockStatus),
    "process 1234 (net:[4026532456]): unlocked",
  );
});
