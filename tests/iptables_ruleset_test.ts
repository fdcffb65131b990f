import assert from "node:assert/strict";
import {
  renderIptablesChange,
  renderIptablesLock,
  renderIptablesUnlock,
} from "../lib/iptables/ruleset.ts";

Deno.test("renderIptablesLock() gives the SPEC text for the defaults", () => {
  assert.equal(
    renderIptablesLock({ name: "NETLOCK", mark: 0xC114 }),
    [
      "*filter",
      ":NETLOCK - [0:0]",
      "-I INPUT -j NETLOCK",
      "-I OUTPUT -j NETLOCK",
      "-A NETLOCK -m mark --mark 0xC114 -j ACCEPT",
      "-A NETLOCK -j DROP",
      "COMMIT",
      "",
    ].join("\n"),
  );
});

Deno.test("renderIptablesLock() with name CRIU is byte for byte CRIU's conf", () => {
  // criu/net.c iptables_network_lock_internal(), SOCCR_MARK = 0xC114.
  const criu = "*filter\n" +
    ":CRIU - [0:0]\n" +
    "-I INPUT -j CRIU\n" +
    "-I OUTPUT -j CRIU\n" +
    "-A CRIU -m mark --mark 0xC114 -j ACCEPT\n" +
    "-A CRIU -j DROP\n" +
    "COMMIT\n";
  assert.equal(renderIptablesLock({ name: "CRIU", mark: 0xC114 }), criu);
});

Deno.test("renderIptablesLock() prints other marks in 0x upper-case hex", () => {
  assert.match(renderIptablesLock({ name: "X", mark: 0 }), /--mark 0x0 -j ACCEPT/);
  assert.match(renderIptablesLock({ name: "X", mark: 0xFFFFFFFF }), /--mark 0xFFFFFFFF -j/);
});

Deno.test("renderIptablesUnlock() removes jumps, then flushes and deletes the chain", () => {
  assert.equal(
    renderIptablesUnlock({ name: "NETLOCK", mark: 0xC114 }),
    "*filter\n-D INPUT -j NETLOCK\n-D OUTPUT -j NETLOCK\n-F NETLOCK\n-X NETLOCK\nCOMMIT\n",
  );
});

Deno.test("renderIptablesChange() repairs duplicated jumps in one transaction", () => {
  const script = renderIptablesChange({ name: "NETLOCK", mark: 0xC114 }, {
    removeJumps: { input: 2, output: 0 },
    chain: "flush",
    addLock: true,
  });
  assert.equal(
    script,
    "*filter\n-D INPUT -j NETLOCK\n-D INPUT -j NETLOCK\n-F NETLOCK\n" +
      "-I INPUT -j NETLOCK\n-I OUTPUT -j NETLOCK\n" +
      "-A NETLOCK -m mark --mark 0xC114 -j ACCEPT\n-A NETLOCK -j DROP\nCOMMIT\n",
  );
  assert.equal(script.match(/COMMIT/g)?.length, 1);
});
