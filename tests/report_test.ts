import assert from "node:assert/strict";
import { NetlockError } from "../lib/common/errors.ts";
import { errorCode, humanSuccess, jsonFailure, jsonSuccess, lockTable } from "../lib/cli/report.ts";
import type { LockStatus, OperationResult } from "../lib/common/types.ts";

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

Deno.test("status and unlock reports say which kinds of lock were found or removed", () => {
  const both: LockStatus = {
    ...RESULT,
    changed: false,
    state: "locked",
    connections: 20,
    kinds: ["netns", "connections"],
  };
  assert.deepEqual(JSON.parse(jsonSuccess("status", both)).kinds, ["netns", "connections"]);
  assert.equal(
    humanSuccess("status", both),
    "process 1234 (net:[4026532456]): locked (iptables, ipv4+ipv6, chain NETLOCK, " +
      "and connection lock NETLOCK-c1234 (20 connections))",
  );
  const connections = { ...both, mode: "connections" as const, kinds: ["connections" as const] };
  assert.equal(
    humanSuccess("status", connections),
    "process 1234 (net:[4026532456]): locked (iptables, ipv4+ipv6, chain NETLOCK-c1234 " +
      "(20 connections))",
  );
  assert.equal(
    humanSuccess("unlock", { ...connections, locked: false, changed: true }),
    "unlocked process 1234 (net:[4026532456]): connection lock NETLOCK-c1234",
  );
  const all = { ...RESULT, locked: false, removed: ["NETLOCK", "NETLOCK-c7"], kinds: [] };
  assert.deepEqual(JSON.parse(jsonSuccess("unlock", all)).removed, ["NETLOCK", "NETLOCK-c7"]);
  assert.equal(
    humanSuccess("unlock", all),
    "unlocked process 1234 (net:[4026532456]): NETLOCK, NETLOCK-c7",
  );
});

Deno.test("lockTable() aligns one row per lock, with - where a field does not apply", () => {
  const target = { netns: "net:[1]" };
  assert.equal(
    lockTable([
      { target, kind: "netns", name: "NETLOCK", backend: "nftables", families: ["ipv4"] },
      {
        target,
        kind: "connections",
        name: "NETLOCK-c42",
        backend: "iptables",
        families: ["ipv4", "ipv6"],
        pid: 42,
        alive: false,
        connections: 3,
        listeners: 1,
        queue: 49428,
      },
    ]),
    [
      "NAMESPACE  KIND         NAME         BACKEND   FAMILIES   PID  ALIVE  CONNECTIONS  LISTENERS  HOLDS",
      "net:[1]    netns        NETLOCK      nftables  ipv4       -    -      -            -          -",
      "net:[1]    connections  NETLOCK-c42  iptables  ipv4+ipv6  42   no     3            1          queue 49428",
    ].join("\n"),
  );
});
