import assert from "node:assert/strict";
import { isCriuNftTable } from "../lib/unlock/criu_locks.ts";
import { inspectNftLock } from "../lib/nftables/lock_state.ts";
import { renderNftLock, renderNftRelock, renderNftUnlock } from "../lib/nftables/ruleset.ts";
import { parseNftTableJson, parseNftTablesJson } from "../lib/nftables/view_parser.ts";

const RULES = { name: "NETLOCK", mark: 0xC114 };
const CHAINS =
  "add chain inet NETLOCK input { type filter hook input priority 0; policy drop; }\n" +
  "add rule inet NETLOCK input meta mark 0xc114 accept\n" +
  "add chain inet NETLOCK output { type filter hook output priority 0; policy drop; }\n" +
  "add rule inet NETLOCK output meta mark 0xc114 accept\n";

Deno.test("renderNftLock() creates the table in one transaction that fails if it exists", () => {
  assert.equal(renderNftLock(RULES), `create table inet NETLOCK\n${CHAINS}`);
});

Deno.test("renderNftRelock() replaces the table atomically; renderNftUnlock() deletes it", () => {
  assert.equal(
    renderNftRelock(RULES),
    `add table inet NETLOCK\ndelete table inet NETLOCK\nadd table inet NETLOCK\n${CHAINS}`,
  );
  assert.equal(renderNftUnlock(RULES), "delete table inet NETLOCK\n");
});

// What `nft -j list table inet NETLOCK` printed for the lock.
const LOCKED_JSON = JSON.stringify({
  nftables: [
    { metainfo: { json_schema_version: 1 } },
    { table: { family: "inet", name: "NETLOCK", handle: 9 } },
    ...["input", "output"].map((hook, i) => ({
      chain: {
        family: "inet",
        table: "NETLOCK",
        name: hook,
        handle: i + 1,
        type: "filter",
        hook,
        prio: 0,
        policy: "drop",
      },
    })),
    ...["input", "output"].map((chain, i) => ({
      rule: {
        family: "inet",
        table: "NETLOCK",
        chain,
        handle: i + 3,
        expr: [
          { match: { op: "==", left: { meta: { key: "mark" } }, right: 49428 } },
          { accept: null },
        ],
      },
    })),
  ],
});

Deno.test("inspectNftLock() tells locked, unlocked, partial and foreign tables apart", () => {
  assert.equal(inspectNftLock(parseNftTableJson(LOCKED_JSON), RULES), "locked");
  assert.equal(inspectNftLock(null, RULES), "unlocked");
  assert.equal(inspectNftLock(parseNftTableJson(LOCKED_JSON), { ...RULES, mark: 1 }), "partial");
  const accepting = parseNftTableJson(LOCKED_JSON.replace('"policy":"drop"', '"policy":"accept"'));
  assert.equal(inspectNftLock(accepting, RULES), "partial");
  const twice = parseNftTableJson(LOCKED_JSON);
  twice.rules.push({ chain: "input", handle: 7, kind: "markAccept", markAccept: 0xC114 });
  assert.equal(inspectNftLock(twice, RULES), "partial");
  // A rule no lock holds: someone else's table of that name.
  const extra = parseNftTableJson(LOCKED_JSON);
  extra.rules.push({ chain: "input", handle: 7, kind: "other" });
  assert.equal(inspectNftLock(extra, RULES), "foreign");
  const forward = parseNftTableJson(LOCKED_JSON);
  forward.chains.push({ name: "forward", handle: 8, hook: "forward", type: "filter" });
  assert.equal(inspectNftLock(forward, RULES), "foreign");
});

Deno.test("isCriuNftTable() matches CRIU's inet tables only", () => {
  const tables = parseNftTablesJson(JSON.stringify({
    nftables: [
      { table: { family: "inet", name: "CRIU-0123456789abcdef0123", handle: 1 } },
      { table: { family: "inet", name: "CRIU-01234", handle: 2 } },
      { table: { family: "inet", name: "CRIU", handle: 3 } },
      { table: { family: "inet", name: "CRIUX", handle: 4 } },
      { table: { family: "ip", name: "CRIU-1", handle: 5 } },
      { table: { family: "inet", name: "other", handle: 6 } },
    ],
  }));
  assert.deepEqual(tables.filter(isCriuNftTable).map((t) => t.name), [
    "CRIU-0123456789abcdef0123",
    "CRIU-01234",
    "CRIU",
  ]);
});
