import assert from "node:assert/strict";
import {
  formatMark,
  parseChoice,
  parseMark,
  parsePid,
  parseTimeoutSeconds,
  resolveNetnsPath,
  validateMark,
  validateName,
} from "../lib/common/options.ts";
import { resolveOptions } from "../lib/netns/prepare.ts";

Deno.test("parsePid() accepts 1..4194304 in decimal only", () => {
  assert.equal(parsePid("1"), 1);
  assert.equal(parsePid("4194304"), 4194304);
  for (const bad of ["", "abc", "0", "-5", "1.5", "99999999999", "+5", "0x10", "1e3", " 7", "٣"]) {
    assert.throws(
      () => parsePid(bad),
      (e: Error) => e instanceof TypeError || e instanceof RangeError,
      bad,
    );
  }
});

Deno.test("parseMark() accepts decimal and 0x-hex from 1 to 0xFFFFFFFF, never 0", () => {
  assert.equal(parseMark("0xC114"), 0xC114);
  assert.equal(parseMark("0xc114"), 0xC114);
  assert.equal(parseMark("1"), 1);
  assert.equal(parseMark("4294967295"), 0xFFFFFFFF);
  // Mark 0 is what every unmarked packet carries: a lock letting it pass drops nothing.
  assert.throws(() => validateMark(0), /every unmarked packet has mark 0/);
  for (
    const bad of [
      "0",
      "0x0",
      "0x00000000",
      "0x1ffffffff",
      "-1",
      "4294967296",
      "0x",
      "1 2",
      "5\n",
      "0xC114\n-A",
      "",
      "1e3",
    ]
  ) {
    assert.throws(
      () => parseMark(bad),
      (e: Error) => e instanceof TypeError || e instanceof RangeError,
      bad,
    );
  }
});

Deno.test("formatMark() prints CRIU's 0xC114 for the default", () => {
  assert.equal(formatMark(0xC114), "0xC114");
});

Deno.test("validateName() accepts iptables-safe names of 1..28 characters", () => {
  assert.equal(validateName("CRIU"), "CRIU");
  assert.equal(validateName("a".repeat(28)), "a".repeat(28));
  for (const bad of ["", "a b", "a\nCOMMIT", "a".repeat(29), "1abc", "-x", "a;b", "ä"]) {
    assert.throws(() => validateName(bad), TypeError, JSON.stringify(bad));
  }
});

Deno.test("parseTimeoutSeconds() takes positive seconds", () => {
  assert.equal(parseTimeoutSeconds("10"), 10_000);
  assert.equal(parseTimeoutSeconds("0.25"), 250);
  for (const bad of ["-1", "0", "abc", "", "1e3", "100000"]) {
    assert.throws(() => parseTimeoutSeconds(bad), RangeError, bad);
  }
});

Deno.test("parseChoice() names the flag and the choices", () => {
  assert.throws(
    () => parseChoice("--backend", "foo", ["iptables", "nftables", "auto"]),
    {
      name: "TypeError",
      message: 'Invalid --backend "foo": expected one of iptables, nftables, auto',
    },
  );
});

Deno.test("resolveNetnsPath() maps bare names to /run/netns and rejects control characters", () => {
  assert.equal(resolveNetnsPath("blue"), "/run/netns/blue");
  assert.equal(resolveNetnsPath("./x"), "./x");
  for (const bad of ["", "a\nb", "..", "\u0000"]) {
    assert.throws(() => resolveNetnsPath(bad), TypeError);
  }
});

Deno.test("resolveOptions() fills defaults and validates library input", () => {
  const options = resolveOptions();
  assert.equal(options.name, "NETLOCK");
  assert.equal(options.mark, 0xC114);
  assert.equal(options.exec.timeoutMs, 10_000);
  assert.throws(() => resolveOptions({ mark: -1 }), RangeError);
  assert.throws(() => resolveOptions({ name: "a b" }), TypeError);
  assert.throws(() => resolveOptions({ timeoutMs: 0 }), RangeError);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => resolveOptions({ backend: "pf" as any }), TypeError);
});

Deno.test("a lock's name is never a built-in chain, for library callers too", () => {
  for (const name of ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"]) {
    assert.throws(() => validateName(name), TypeError, name);
    assert.throws(() => resolveOptions({ name }), /built-in chain/, name);
  }
  assert.equal(validateName("input"), "input", "iptables chain names are case-sensitive");
  assert.throws(() => resolveOptions({ mark: 0 }), RangeError);
});
