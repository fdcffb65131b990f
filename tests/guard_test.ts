/**
 * The lock's guard: the shell script itself, run for real in netlock's own
 * namespaces (`nsenter` with no namespace flag needs no privilege), its
 * result parsing, and how the iptables backend treats its refusals.
 */
import assert from "node:assert/strict";
import {
  guardedTarget,
  GuardRefusal,
  parseGuarded,
  stoppedBeforeTool,
} from "../lib/netns/guard.ts";
import { iptablesLock } from "../lib/iptables/backend.ts";
import { iptablesUnlock } from "../lib/unlock/iptables.ts";
import { assertToolSuccess, type ToolExec } from "../lib/exec/nsenter.ts";
import { printedBeforeKill, runCommand, type RunResult } from "../lib/exec/runner.ts";
import { ownNetns } from "../lib/netns/target.ts";

const OWN = { label: "netlock's own namespace", nsenterArgs: [] };
const SETTINGS = { timeoutMs: 5000 };

function result(code: number, stdout: string, stderr = ""): RunResult {
  return {
    argv: [],
    code,
    signal: null,
    success: code === 0,
    stdout,
    stderr,
    stdinClosedEarly: false,
  };
}

Deno.test("the guard refuses netlock's own namespace before the tool runs", async () => {
  const target = guardedTarget(OWN, SETTINGS, { ownPid: Deno.pid, checkIpv6: false });
  const marker = await Deno.makeTempFile();
  await Deno.remove(marker);
  const error = await target.exec("touch", [marker]).catch((e) => e);
  assert.ok(error instanceof GuardRefusal, String(error));
  assert.equal(error.reason, "own");
  assert.equal(error.code, "OWN_NAMESPACE");
  assert.ok(stoppedBeforeTool(error));
  // The tool never ran.
  await assert.rejects(Deno.stat(marker), Deno.errors.NotFound);
  assert.equal(target.report(), undefined);
});

Deno.test("the guard reports the namespace and IPv6, then execs the tool with its stdin", async () => {
  const target = guardedTarget(OWN, SETTINGS, { checkIpv6: true });
  const first = await target.exec("cat", [], "ruleset\n");
  assert.equal(first.stdout, "ruleset\n");
  assert.equal(first.code, 0);
  const report = target.report();
  assert.equal(report?.netns, await ownNetns(SETTINGS));
  let ipv6 = true;
  await Deno.stat("/proc/sys/net/ipv6").catch(() => ipv6 = false);
  assert.equal(report?.ipv6, ipv6);
  // Once a guard has passed, tools run plain (no guard line to strip).
  const second = await target.exec("sh", ["-c", "echo $0"]);
  assert.equal(second.stdout, "sh\n");
});

Deno.test("a tool missing behind the guard is reported as missing, not as a failure", async () => {
  const target = guardedTarget(OWN, SETTINGS, { checkIpv6: false });
  await assert.rejects(
    async () =>
      assertToolSuccess(await target.exec("netlock-no-such-tool", []), "netlock-no-such-tool"),
    { code: "TOOL_NOT_FOUND" },
  );
});

Deno.test("a guarded tool killed after the guard's line counts as run (it may have applied)", async () => {
  const killedLate = guardedTarget(
    { label: "x", nsenterArgs: [] },
    { timeoutMs: 300 },
    { checkIpv6: false },
  );
  // The guard's line is printed, then the tool hangs: it ran.
  const late = await killedLate.exec("sleep", ["5"]).catch((e) => e);
  assert.equal(late.code, "TIMEOUT");
  assert.equal(stoppedBeforeTool(late), false);
  assert.equal(killedLate.report()?.ipv6 !== undefined, true);
});

Deno.test("printedBeforeKill() is the stdout of a child killed at its timeout", async () => {
  const error = await runCommand("sh", {
    args: ["-c", "echo started; exec sleep 5"],
    timeoutMs: 300,
  }).catch((e) => e);
  assert.equal(error.code, "TIMEOUT");
  assert.equal(printedBeforeKill(error), "started\n");
  assert.equal(printedBeforeKill(new Error("other")), undefined);
});

Deno.test("parseGuarded() strips the guard's line and maps its refusals", () => {
  const passed = parseGuarded(result(1, "netlock-guard - 0\n", "iptables-restore: failed\n"));
  assert.deepEqual(passed.report, { ipv6: false });
  assert.equal(passed.result.stdout, "");
  assert.equal(passed.result.code, 1);
  // nsenter failed before the guard: nothing to strip, no report.
  const unguarded = parseGuarded(result(1, "", "nsenter: cannot open /proc/9/ns/net\n"));
  assert.equal(unguarded.report, undefined);
  for (
    const [code, line, reason] of [
      [86, "netlock-guard: own namespace", "own"],
      [87, "netlock-guard: no IPv6", "no-ipv6"],
      [88, "netlock-guard: cannot see netlock's namespace", "blind"],
    ] as const
  ) {
    assert.throws(() => parseGuarded(result(code, "", `${line}\n`)), { reason });
  }
  // A tool that happens to exit 86 is not a refusal.
  assert.equal(parseGuarded(result(86, "netlock-guard 5 1\n", "tool: odd\n")).result.code, 86);
});

Deno.test("iptablesLock() locks IPv4 alone when the guard finds no IPv6, and rolls nothing back", async () => {
  const calls: string[] = [];
  let v4 = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
  const exec: ToolExec = (tool, _args, stdin) => {
    calls.push(tool);
    if (tool.startsWith("ip6tables")) {
      return Promise.reject(new GuardRefusal("no-ipv6", "the target's no IPv6"));
    }
    if (tool === "iptables-restore") {
      assert.match(typeof stdin === "string" ? stdin : "", /-N NETLOCK/);
      v4 = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:NETLOCK - [0:0]\n" +
        "-A INPUT -j NETLOCK\n-A OUTPUT -j NETLOCK\n" +
        "-A NETLOCK -m mark --mark 0xc114 -j ACCEPT\n-A NETLOCK -j DROP\nCOMMIT\n";
      return Promise.resolve(result(0, ""));
    }
    if (tool === "iptables-save") return Promise.resolve(result(0, v4));
    return Promise.reject(new Error(`unexpected ${tool}`));
  };
  const outcome = await iptablesLock({
    exec,
    rules: { name: "NETLOCK", mark: 0xC114 },
    families: ["ipv4", "ipv6"],
    dryRun: false,
  }, iptablesUnlock);
  assert.deepEqual(outcome, { changed: true });
  assert.deepEqual(calls.sort(), ["ip6tables-restore", "iptables-restore", "iptables-save"]);
});

Deno.test("iptablesLock() refused by the guard in every family: nothing run, nothing rolled back", async () => {
  const calls: string[] = [];
  const exec: ToolExec = (tool) => {
    calls.push(tool);
    return Promise.reject(new GuardRefusal("own", "the target's namespace is netlock's own"));
  };
  await assert.rejects(
    iptablesLock({
      exec,
      rules: { name: "NETLOCK", mark: 0xC114 },
      families: ["ipv4", "ipv6"],
      dryRun: false,
    }, iptablesUnlock),
    GuardRefusal,
  );
  assert.deepEqual(calls.sort(), ["ip6tables-restore", "iptables-restore"]);
});
