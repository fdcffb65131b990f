import assert from "node:assert/strict";
import { baseChain, rule } from "./helpers/nft_json.ts";
import { hasLockChain, isNetlockChain, planNftUnlockCommands } from "../lib/unlock/plan.ts";
import { parseNftTableJson } from "../lib/nftables/view_parser.ts";

const JUMP = [{ counter: { packets: 0, bytes: 0 } }, { jump: { target: "NETLOCK" } }];

// What `nft -j list table ip filter` printed after `netlock lock` in a fresh namespace.
const FRESH_LOCK = JSON.stringify({
  nftables: [
    { metainfo: { version: "1.0.6", release_name: "Lester Gooch #5", json_schema_version: 1 } },
    { table: { family: "ip", name: "filter", handle: 5 } },
    { chain: { family: "ip", table: "filter", name: "NETLOCK", handle: 1 } },
    baseChain("ip", "filter", "INPUT", 2),
    baseChain("ip", "filter", "OUTPUT", 4),
    rule("ip", "filter", "NETLOCK", 6, [
      { match: { op: "==", left: { meta: { key: "mark" } }, right: 49428 } },
      { counter: { packets: 0, bytes: 0 } },
      { accept: null },
    ]),
    rule("ip", "filter", "NETLOCK", 7, [{ counter: { packets: 0, bytes: 0 } }, { drop: null }]),
    rule("ip", "filter", "INPUT", 3, JUMP),
    rule("ip", "filter", "OUTPUT", 5, JUMP),
  ],
});

Deno.test("parseNftTableJson() keeps handles, hooks, policies and plain jumps", () => {
  const view = parseNftTableJson(FRESH_LOCK);
  assert.equal(view.family, "ip");
  assert.deepEqual(view.chains[1], {
    name: "INPUT",
    handle: 2,
    hook: "input",
    policy: "accept",
    type: "filter",
    prio: 0,
  });
  assert.equal(view.rules[0].markAccept, 0xC114);
  assert.deepEqual(view.rules.map((rule) => rule.plainJumpTo ?? "-"), [
    "-",
    "-",
    "NETLOCK",
    "NETLOCK",
  ]);
  assert.equal(view.otherObjects, 0);
  assert.ok(hasLockChain(view, "NETLOCK"));
  assert.ok(!hasLockChain(view, "CRIU"));
});

Deno.test("planNftUnlockCommands() removes a lock made in a fresh namespace down to the table", () => {
  assert.deepEqual(planNftUnlockCommands(parseNftTableJson(FRESH_LOCK), "NETLOCK"), [
    "delete rule ip filter INPUT handle 3",
    "delete rule ip filter OUTPUT handle 5",
    "flush chain ip filter NETLOCK",
    "delete chain ip filter NETLOCK",
    "delete chain ip filter INPUT",
    "delete chain ip filter OUTPUT",
    "delete table ip filter",
  ]);
});

Deno.test("planNftUnlockCommands() keeps base chains and tables that existed before the lock", () => {
  const view = parseNftTableJson(FRESH_LOCK);
  // INPUT existed before the lock (lower handle) and holds a user rule; FORWARD is the user's.
  view.chains[1].handle = 0;
  view.chains.push({ name: "FORWARD", handle: 9, hook: "forward", policy: "drop" });
  view.rules.push({ chain: "INPUT", handle: 10, kind: "other" });
  assert.deepEqual(planNftUnlockCommands(view, "NETLOCK"), [
    "delete rule ip filter INPUT handle 3",
    "delete rule ip filter OUTPUT handle 5",
    "flush chain ip filter NETLOCK",
    "delete chain ip filter NETLOCK",
    "delete chain ip filter OUTPUT",
  ]);
});

Deno.test("planNftUnlockCommands() keeps a table holding sets, and does nothing without a lock", () => {
  const view = parseNftTableJson(FRESH_LOCK);
  view.otherObjects = 1;
  assert.ok(!planNftUnlockCommands(view, "NETLOCK").includes("delete table ip filter"));
  assert.deepEqual(planNftUnlockCommands(view, "OTHER"), []);
});

Deno.test("planNftUnlockCommands() tidies a table made for locks that another unlock emptied, and only that", () => {
  // Two locks removed at once: each saw the other's chain, and the table stayed, empty.
  const left = parseNftTableJson(JSON.stringify({
    nftables: [
      { table: { family: "ip", name: "filter", handle: 1 } },
      baseChain("ip", "filter", "INPUT", 3),
      baseChain("ip", "filter", "OUTPUT", 5),
    ],
  }));
  assert.deepEqual(planNftUnlockCommands(left, "NETLOCK-c42"), [], "nothing of the lock: no tidy");
  assert.deepEqual(planNftUnlockCommands(left, "NETLOCK-c42", true), [
    "delete chain ip filter INPUT",
    "delete chain ip filter OUTPUT",
    "delete table ip filter",
  ]);
  // A user's own table (its INPUT came first) or rule stays.
  const own = parseNftTableJson(JSON.stringify({
    nftables: [
      { table: { family: "ip", name: "filter", handle: 1 } },
      baseChain("ip", "filter", "INPUT", 1),
    ],
  }));
  assert.deepEqual(planNftUnlockCommands(own, "NETLOCK-c42", true), []);
  const ruled = parseNftTableJson(JSON.stringify({
    nftables: [
      { table: { family: "ip", name: "filter", handle: 1 } },
      baseChain("ip", "filter", "INPUT", 3),
      rule("ip", "filter", "INPUT", 4, [{ counter: null }, { accept: null }]),
    ],
  }));
  assert.deepEqual(planNftUnlockCommands(ruled, "NETLOCK-c42", true), []);
});

Deno.test("isNetlockChain() takes a read connection lock: its drops, its tree's jumps, the return that opens it", () => {
  const view = parseNftTableJson(JSON.stringify({
    nftables: [
      { table: { family: "ip", name: "filter", handle: 1 } },
      { chain: { family: "ip", table: "filter", name: "NETLOCK-c42", handle: 1 } },
      { chain: { family: "ip", table: "filter", name: "NETLOCK-c42.0", handle: 2 } },
      baseChain("ip", "filter", "INPUT", 3),
      rule("ip", "filter", "INPUT", 4, [{ counter: null }, { jump: { target: "NETLOCK-c42" } }]),
      rule("ip", "filter", "NETLOCK-c42", 5, [{ counter: null }, { return: null }]),
      rule("ip", "filter", "NETLOCK-c42", 6, [
        { match: { op: "==", left: { payload: { protocol: "tcp", field: "dport" } }, right: 80 } },
        { counter: null },
        { jump: { target: "NETLOCK-c42.0" } },
      ]),
    ],
  }));
  assert.equal(isNetlockChain(view, "NETLOCK-c42", "connections", true), true);
  // A jump elsewhere is not a lock's.
  const elsewhere = {
    ...view,
    rules: view.rules.map((r) => ({ ...r, jumpsTo: r.jumpsTo?.replace(".0", "X") })),
  };
  assert.equal(isNetlockChain(elsewhere, "NETLOCK-c42", "connections", true), false);
});

Deno.test("planNftUnlockCommands() removes a namespace lock that holds (iptables-nft's NFQUEUE target)", () => {
  const holding = FRESH_LOCK.replace(
    '{"drop":null}',
    '{"xt":{"type":"target","name":"NFQUEUE"}}',
  );
  assert.notEqual(holding, FRESH_LOCK);
  const view = parseNftTableJson(holding);
  assert.equal(isNetlockChain(view, "NETLOCK", "netns", true), true, "the chain is netlock's");
  assert.deepEqual(
    planNftUnlockCommands(view, "NETLOCK"),
    planNftUnlockCommands(parseNftTableJson(FRESH_LOCK), "NETLOCK"),
  );
});

Deno.test("parseNftTableJson() takes a connection lock's queues (a lock that holds) as its drops", () => {
  // What `nft -j` lists for iptables-nft's `-j NFQUEUE --queue-num N` rules (an xt target).
  const queue = { xt: { type: "target", name: "NFQUEUE" } };
  const counter = { counter: { packets: 0, bytes: 0 } };
  const match = (protocol: string, field: string, right: unknown) => ({
    match: { op: "==", left: { payload: { protocol, field } }, right },
  });
  const view = parseNftTableJson(JSON.stringify({
    nftables: [
      { chain: { family: "ip", table: "filter", name: "NETLOCK-c7", handle: 1 } },
      rule("ip", "filter", "NETLOCK-c7", 2, [
        match("ip", "saddr", "198.18.0.2"),
        match("ip", "daddr", "198.18.0.1"),
        match("tcp", "sport", 80),
        match("tcp", "dport", 5000),
        counter,
        queue,
      ]),
      rule("ip", "filter", "NETLOCK-c7", 3, [
        {
          match: {
            op: "==",
            left: {
              "&": [{ payload: { protocol: "tcp", field: "flags" } }, ["fin", "syn", "rst", "ack"]],
            },
            right: "syn",
          },
        },
        match("tcp", "dport", 80),
        counter,
        queue,
      ]),
    ],
  }));
  assert.deepEqual(view.rules.map((r) => r.kind), ["matchedDrop", "matchedDrop"]);
});
