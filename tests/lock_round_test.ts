import assert from "node:assert/strict";
import { NetlockError } from "../lib/common/errors.ts";
import type { ToolExec } from "../lib/exec/nsenter.ts";
import { runCommand, type RunResult } from "../lib/exec/runner.ts";
import { lockRound, ROUND_SCRIPT } from "../lib/iptables/lock_round.ts";
import { GuardRefusal, stoppedBeforeTool } from "../lib/netns/guard.ts";

interface Spawn {
  tool: string;
  args: readonly string[];
  stdin?: string;
}

function ok(argv: string[], code: number, stdout = "", stderr = ""): RunResult {
  return { argv, code, signal: null, success: code === 0, stdout, stderr, stdinClosedEarly: false };
}

/** An exec that records each spawn and answers the round with `round`, any tool with `tool`. */
function recorder(
  round: (args: readonly string[]) => RunResult | Promise<RunResult>,
  tool: (name: string) => RunResult = (name) => ok([name], 0),
): { exec: ToolExec; spawns: Spawn[] } {
  const spawns: Spawn[] = [];
  const exec: ToolExec = (name, args, stdin) => {
    spawns.push({ tool: name, args, stdin: typeof stdin === "string" ? stdin : undefined });
    return Promise.resolve(name === "timeout" ? round(args) : tool(name));
  };
  return { exec, spawns };
}

const RESTORE = ["-w", "--noflush"];

Deno.test("lockRound() runs the restores of one tick in one spawn and serves the reads after them", async () => {
  const { exec, spawns } = recorder(() =>
    ok(
      ["timeout"],
      0,
      "@@restore 0 0\n\n@@end\n@@save 0 0\n*filter\nv4\n@@end\n",
      "@@restore 1 0\n\n@@end\n@@save 1 0\n*filter\nv6\n@@end\n",
    )
  );
  const round = lockRound(exec, 10_000);
  const [v4, v6] = await Promise.all([
    round("iptables-restore", RESTORE, "*filter\nA\nCOMMIT\n"),
    round("ip6tables-restore", RESTORE, "*filter\nB\nCOMMIT\n"),
  ]);
  assert.equal(v4.code, 0);
  assert.equal(v6.code, 0);
  assert.equal(spawns.length, 1);
  assert.deepEqual(spawns[0].args.slice(0, 3), ["-k", "1.000", "8.000"]);
  assert.equal(spawns[0].args[5], ROUND_SCRIPT);
  assert.deepEqual(spawns[0].args.slice(7), [
    "iptables-restore",
    "iptables-save",
    "*filter\nA\nCOMMIT",
    "ip6tables-restore",
    "ip6tables-save",
    "*filter\nB\nCOMMIT",
  ]);
  assert.equal((await round("iptables-save", ["-t", "filter"])).stdout, "*filter\nv4\n");
  assert.equal((await round("ip6tables-save", ["-t", "filter"])).stdout, "*filter\nv6\n");
  assert.equal(spawns.length, 1, "both reads came from the round");
  // A read is served once: the next one spawns.
  await round("iptables-save", ["-t", "filter"]);
  assert.equal(spawns.length, 2);
});

Deno.test("lockRound() passes a failed restore's code and stderr on, and reads nothing for it", async () => {
  const { exec, spawns } = recorder(() =>
    ok(
      ["timeout"],
      0,
      "@@restore 0 1\niptables-restore: line 2 failed\n@@end\n@@save 0 0\nx\n@@end\n",
    )
  );
  const round = lockRound(exec, 10_000);
  const failed = await round("iptables-restore", RESTORE, "*filter\nCOMMIT\n");
  assert.equal(failed.code, 1);
  assert.equal(failed.success, false);
  assert.equal(failed.stderr, "iptables-restore: line 2 failed\n");
  assert.equal(spawns.length, 1);
});

Deno.test("lockRound() goes tool by tool when the round ran nothing (a missing tool)", async () => {
  const { exec, spawns } = recorder(() => ok(["timeout"], 89));
  const round = lockRound(exec, 10_000);
  const results = await Promise.all([
    round("iptables-restore", RESTORE, "a\n"),
    round("ip6tables-restore", RESTORE, "b\n"),
  ]);
  assert.deepEqual(results.map((r) => r.code), [0, 0]);
  assert.deepEqual(spawns.map((s) => [s.tool, s.stdin]), [
    ["timeout", undefined],
    ["iptables-restore", "a\n"],
    ["ip6tables-restore", "b\n"],
  ]);
});

Deno.test("lockRound() reports a restore the round's time stopped as that tool's timeout", async () => {
  // The first family finished, the second was still running at timeout(1)'s signal.
  const { exec } = recorder(() => ok(["timeout"], 124, "@@restore 0 0\n\n@@end\n"));
  const round = lockRound(exec, 500);
  const [v4, v6] = await Promise.allSettled([
    round("iptables-restore", RESTORE, "a\n"),
    round("ip6tables-restore", RESTORE, "b\n"),
  ]);
  assert.equal(v4.status === "fulfilled" && v4.value.code, 0);
  assert(v6.status === "rejected" && v6.reason instanceof NetlockError);
  assert.equal(v6.reason.code, "TIMEOUT");
  assert.equal(v6.reason.message, "ip6tables-restore did not finish within 0.5 s and was killed");
});

Deno.test("lockRound() names the restores when the whole spawn was stopped, and keeps whether anything ran", async () => {
  const killed = new NetlockError("TIMEOUT", "timeout did not finish within 0.5 s and was killed");
  const { exec } = recorder(() => Promise.reject(killed));
  const round = lockRound(exec, 500);
  const settled = await Promise.allSettled([
    round("iptables-restore", RESTORE, "a\n"),
    round("ip6tables-restore", RESTORE, "b\n"),
  ]);
  const reasons = settled.map((s) => s.status === "rejected" ? s.reason : undefined);
  assert.deepEqual(reasons.map((r) => r?.message), [
    "iptables-restore did not finish within 0.5 s and was killed",
    "ip6tables-restore did not finish within 0.5 s and was killed",
  ]);
  assert.equal(reasons[0].cause, killed);
  // The cause decides: this one is not known to have stopped before the tool.
  assert.equal(stoppedBeforeTool(reasons[0]), false);
  assert.equal(
    stoppedBeforeTool(new NetlockError("TIMEOUT", "x", { cause: new GuardRefusal("own", "own") })),
    true,
  );
});

Deno.test("lockRound() refuses the IPv6 restore of a kernel without IPv6 as the guard does", async () => {
  const { exec } = recorder(() =>
    ok(["timeout"], 0, "@@restore 0 0\n\n@@end\n", "@@restore 1 -\n@@end\n")
  );
  const round = lockRound(exec, 10_000);
  const [v4, v6] = await Promise.allSettled([
    round("iptables-restore", RESTORE, "a\n"),
    round("ip6tables-restore", RESTORE, "b\n"),
  ]);
  assert.equal(v4.status, "fulfilled");
  assert(v6.status === "rejected" && v6.reason instanceof GuardRefusal);
});

Deno.test("lockRound() leaves large inputs, other tools and other arguments to the plain exec", async () => {
  const { exec, spawns } = recorder(() => ok(["timeout"], 0));
  const round = lockRound(exec, 10_000);
  await round("iptables-restore", RESTORE, "x".repeat(40 * 1024));
  await round("iptables-restore", ["-w"], "a\n");
  await round("nft", ["-f", "-"], "a\n");
  assert.deepEqual(spawns.map((s) => s.tool), ["iptables-restore", "iptables-restore", "nft"]);
});

Deno.test("ROUND_SCRIPT runs both families in one shell and prints a block for each", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netlock-round-" });
  try {
    // Fake tools: a restore prints what it read to a file and fails on "bad";
    // a save prints its own name.
    const restore =
      `#!/bin/sh\ninput=$(cat)\ncase $input in *bad*) echo "$0: bad line" >&2; exit 2;; esac\n`;
    const save = '#!/bin/sh\necho "*filter from ${0##*/}"\n';
    for (const family of ["iptables", "ip6tables"]) {
      await Deno.writeTextFile(`${dir}/${family}-restore`, restore, { mode: 0o755 });
      await Deno.writeTextFile(`${dir}/${family}-save`, save, { mode: 0o755 });
    }
    const run = (...args: string[]) =>
      runCommand("/bin/sh", {
        args: ["-c", ROUND_SCRIPT, "netlock-lock-round", ...args],
        env: { PATH: `${dir}:/usr/bin:/bin` },
      });
    const both = await run(
      "iptables-restore",
      "iptables-save",
      "good",
      "ip6tables-restore",
      "ip6tables-save",
      "bad",
    );
    assert.equal(both.code, 0, both.stderr);
    assert.equal(
      both.stdout,
      "@@restore 0 0\n\n@@end\n@@save 0 0\n*filter from iptables-save\n@@end\n",
    );
    const v6 = Deno.statSync("/proc/sys/net/ipv6").isDirectory;
    assert.equal(
      both.stderr,
      v6
        ? `@@restore 1 2\n${dir}/ip6tables-restore: bad line\n@@end\n@@save 1 0\n*filter from ip6tables-save\n@@end\n`
        : "@@restore 1 -\n@@end\n",
    );
    const missing = await run("iptables-restore", "no-such-save", "good");
    assert.equal(missing.code, 89);
    assert.equal(missing.stdout, "", "nothing ran");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
