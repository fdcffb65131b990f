import assert from "node:assert/strict";
import { baseChain, rule } from "./helpers/nft_json.ts";
import { parseNftTableJson, tableView } from "../lib/nftables/view_parser.ts";
import { lockNamesIn, planUnlock } from "../lib/unlock/plan.ts";
import { processLockOf } from "../lib/connections/ruleset.ts";
import { connectionShape } from "../lib/shape/connections.ts";

const MARK_MATCH = { match: { op: "==", left: { meta: { key: "mark" } }, right: 49428 } };

// `nft -t -j list ruleset` of a namespace holding netlock's iptables lock (IPv4 only), netlock's
// nftables table, CRIU's leftover chain in ip6 filter and CRIU's table, and a user table.
const RULESET = JSON.stringify({
  nftables: [
    { metainfo: { json_schema_version: 1 } },
    { table: { family: "ip", name: "filter", handle: 1 } },
    { chain: { family: "ip", table: "filter", name: "NETLOCK", handle: 1 } },
    baseChain("ip", "filter", "INPUT", 2),
    baseChain("ip", "filter", "OUTPUT", 4),
    rule("ip", "filter", "INPUT", 3, [{ counter: null }, { jump: { target: "NETLOCK" } }]),
    rule("ip", "filter", "OUTPUT", 5, [{ counter: null }, { jump: { target: "NETLOCK" } }]),
    { table: { family: "ip6", name: "filter", handle: 2 } },
    baseChain("ip6", "filter", "INPUT", 1),
    { chain: { family: "ip6", table: "filter", name: "CRIU", handle: 2 } },
    rule("ip6", "filter", "INPUT", 3, [{ jump: { target: "CRIU" } }]),
    { table: { family: "inet", name: "NETLOCK", handle: 3 } },
    baseChain("inet", "NETLOCK", "input", 1, "drop"),
    rule("inet", "NETLOCK", "input", 2, [MARK_MATCH, { accept: null }]),
    { table: { family: "inet", name: "CRIU-0123", handle: 4 } },
    { table: { family: "inet", name: "user", handle: 5 } },
  ],
});

Deno.test("planUnlock() removes netlock's lock of both backends in one list of commands", () => {
  const plan = planUnlock(parseNftTableJson(RULESET, { allTables: true }), ["NETLOCK"], false);
  assert.deepEqual(plan.commands, [
    "delete rule ip filter INPUT handle 3",
    "delete rule ip filter OUTPUT handle 5",
    "flush chain ip filter NETLOCK",
    "delete chain ip filter NETLOCK",
    "delete chain ip filter INPUT",
    "delete chain ip filter OUTPUT",
    "delete table ip filter",
    "delete table inet NETLOCK",
  ]);
  assert.deepEqual(plan.iptables, ["ipv4"]);
  assert.equal(plan.nftables, true);
  assert.deepEqual(plan.criu, { iptables: [], nftables: [] });
});

Deno.test("planUnlock() with criu also removes CRIU's chain and tables, and nothing of the user's", () => {
  const plan = planUnlock(parseNftTableJson(RULESET, { allTables: true }), ["NETLOCK"], true);
  assert.ok(plan.commands.includes("delete rule ip6 filter INPUT handle 3"));
  assert.ok(plan.commands.includes("delete chain ip6 filter CRIU"));
  // INPUT existed before CRIU's chain (lower handle): kept, and so is the table.
  assert.ok(!plan.commands.includes("delete chain ip6 filter INPUT"));
  assert.ok(plan.commands.includes("delete table inet CRIU-0123"));
  assert.ok(!plan.commands.some((command) => command.includes("user")));
  assert.deepEqual(plan.criu, { iptables: ["ipv6"], nftables: ["CRIU-0123"] });
});

Deno.test("planUnlock() has nothing to do in a namespace without a lock", () => {
  const empty = parseNftTableJson('{"nftables":[{"metainfo":{}}]}', { allTables: true });
  assert.deepEqual(planUnlock(empty, ["NETLOCK"], true).commands, []);
});

// `ip filter` after lock A (chain handle 1, which made INPUT 2 and OUTPUT 3) was removed while
// lock B (chain 4, jumps 5 and 6) stayed, and a namespace lock NETLOCK (chain 7, jumps 8, 9).
const AFTER_A = JSON.stringify({
  nftables: [
    { metainfo: { json_schema_version: 1 } },
    { table: { family: "ip", name: "filter", handle: 1 } },
    baseChain("ip", "filter", "INPUT", 2),
    baseChain("ip", "filter", "OUTPUT", 3),
    { chain: { family: "ip", table: "filter", name: "NETLOCK-c42", handle: 4 } },
    rule("ip", "filter", "INPUT", 5, [{ jump: { target: "NETLOCK-c42" } }]),
    rule("ip", "filter", "OUTPUT", 6, [{ jump: { target: "NETLOCK-c42" } }]),
    { chain: { family: "ip", table: "filter", name: "NETLOCK", handle: 7 } },
    rule("ip", "filter", "INPUT", 8, [{ jump: { target: "NETLOCK" } }]),
    rule("ip", "filter", "OUTPUT", 9, [{ jump: { target: "NETLOCK" } }]),
    { table: { family: "inet", name: "NETLOCK-c7", handle: 2 } },
  ],
});

Deno.test("planUnlock() removes several locks at once and says which it found", () => {
  const state = parseNftTableJson(AFTER_A, { allTables: true });
  const plan = planUnlock(state, ["NETLOCK", "NETLOCK-c42", "NETLOCK-c99"], false);
  assert.deepEqual(plan.locks, ["NETLOCK", "NETLOCK-c42"]);
  assert.deepEqual(plan.iptables, ["ipv4"]);
  assert.equal(plan.nftables, false, "the inet table NETLOCK-c7 is not asked for");
  // The lock that made INPUT and OUTPUT is gone; nothing else is left: they go, and the table.
  assert.deepEqual(plan.commands.slice(-3), [
    "delete chain ip filter INPUT",
    "delete chain ip filter OUTPUT",
    "delete table ip filter",
  ]);
  // Removing one lock of two leaves the table and its chains to the other.
  const one = planUnlock(state, ["NETLOCK"], false);
  assert.deepEqual(one.commands, [
    "delete rule ip filter INPUT handle 8",
    "delete rule ip filter OUTPUT handle 9",
    "flush chain ip filter NETLOCK",
    "delete chain ip filter NETLOCK",
  ]);
});

Deno.test("lockNamesIn() finds the namespace lock and every connection lock of a name", () => {
  const state = parseNftTableJson(AFTER_A, { allTables: true });
  assert.deepEqual(lockNamesIn(state, "NETLOCK"), ["NETLOCK-c42", "NETLOCK", "NETLOCK-c7"]);
  assert.deepEqual(lockNamesIn(state, "OTHER"), []);
  // A name cut to fit 22 characters with the PID (28 with a tree chain's `.ID`)
  // is still found; a look-alike is not.
  const long = "L".repeat(28);
  assert.deepEqual(processLockOf(`${"L".repeat(15)}-c12345`, long), {
    kind: "connections",
    pid: 12345,
  });
  assert.deepEqual(processLockOf(`${"L".repeat(15)}-g12345`, long), { kind: "cgroup", pid: 12345 });
  assert.equal(processLockOf(`${"L".repeat(14)}-c12345`, long), undefined);
  assert.equal(processLockOf("NETLOCK-c0", "NETLOCK"), undefined);
  assert.equal(processLockOf("NETLOCK-c042", "NETLOCK"), undefined);
});

Deno.test("planUnlock() leaves a chain or table of the lock's name that is not a lock alone", () => {
  const state = parseNftTableJson(
    JSON.stringify({
      nftables: [
        { table: { family: "ip", name: "filter", handle: 1 } },
        { chain: { family: "ip", table: "filter", name: "NETLOCK", handle: 1 } },
        rule("ip", "filter", "NETLOCK", 2, [{ accept: null }]),
        { table: { family: "inet", name: "NETLOCK", handle: 2 } },
        baseChain("inet", "NETLOCK", "input", 1),
        rule("inet", "NETLOCK", "input", 2, [{
          match: {
            op: "==",
            left: { payload: { protocol: "ip", field: "saddr" } },
            right: "10.9.9.9",
          },
        }, { accept: null }]),
      ],
    }),
    { allTables: true },
  );
  state.rulesOf = "all";
  const plan = planUnlock(state, ["NETLOCK"], false);
  assert.deepEqual(plan.commands, []);
  assert.deepEqual(plan.foreign, ["chain NETLOCK of table ip filter", "table inet NETLOCK"]);
});

Deno.test("a connection lock a restore opened (accepts ahead of its drops) is netlock's, and no longer a lock", () => {
  const UNMARKED = { match: { op: "!=", left: { meta: { key: "mark" } }, right: 49428 } };
  const table = (rules: unknown[]) =>
    parseNftTableJson(
      JSON.stringify({
        nftables: [
          { table: { family: "inet", name: "NETLOCK-c42", handle: 7 } },
          { set: { family: "inet", table: "NETLOCK-c42", name: "conn4", handle: 3, elem: [] } },
          baseChain("inet", "NETLOCK-c42", "input", 1),
          baseChain("inet", "NETLOCK-c42", "output", 2),
          ...rules,
        ],
      }),
      { allTables: true },
    );
  const drops = [
    rule("inet", "NETLOCK-c42", "input", 5, [UNMARKED, { drop: null }]),
    rule("inet", "NETLOCK-c42", "output", 6, [UNMARKED, { drop: null }]),
  ];
  const accepts = [
    rule("inet", "NETLOCK-c42", "input", 8, [{ accept: null }]),
    rule("inet", "NETLOCK-c42", "output", 9, [{ accept: null }]),
  ];
  const opened = table([...accepts, ...drops]);
  opened.rulesOf = "all";
  const connections = () => "connections" as const;
  assert.deepEqual(planUnlock(opened, ["NETLOCK-c42"], false, {}, connections).commands, [
    "delete table inet NETLOCK-c42",
  ]);
  const shape = connectionShape("NETLOCK", 0xC114, 42);
  const one = (state: ReturnType<typeof table>) => tableView(state, "inet", "NETLOCK-c42");
  assert.equal(shape.nftLock.inspect(one(table(drops))), "locked");
  assert.equal(shape.nftLock.inspect(one(opened)), "partial");
  // Accepts alone are not a lock of netlock's.
  const bare = table(accepts);
  bare.rulesOf = "all";
  assert.deepEqual(planUnlock(bare, ["NETLOCK-c42"], false, {}, connections).foreign, [
    "table inet NETLOCK-c42",
  ]);
  assert.equal(shape.nftLock.inspect(one(bare)), "foreign");
});
