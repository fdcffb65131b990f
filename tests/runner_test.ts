import assert from "node:assert/strict";
import { NetlockError } from "../lib/common/errors.ts";
import { assertSuccess, describeFailure, runCommand } from "../lib/exec/runner.ts";

Deno.test("runCommand() pipes 2 MiB through stdin while draining stdout", async () => {
  const input = new Uint8Array(2 << 20).map((_, i) => 97 + (i % 26));
  const result = await runCommand("cat", { stdin: input });
  assert.equal(result.success, true);
  assert.equal(result.stdout.length, input.length);
  assert.equal(result.stdout.slice(0, 3), "abc");
  assert.equal(result.stdinClosedEarly, false);
});

Deno.test("runCommand() takes stdin from a ReadableStream", async () => {
  const stream = ReadableStream.from(["*filter\n", "COMMIT\n"]).pipeThrough(
    new TextEncoderStream(),
  );
  const result = await runCommand("cat", { stdin: stream });
  assert.equal(result.stdout, "*filter\nCOMMIT\n");
});

Deno.test("runCommand() reports a child that exits early without crashing (BrokenPipe)", async () => {
  const result = await runCommand("sh", {
    args: ["-c", "head -c 1 >/dev/null; echo gone >&2; exit 3"],
    stdin: new Uint8Array(2 << 20),
  });
  assert.equal(result.code, 3);
  assert.equal(result.stderr, "gone\n");
  assert.equal(result.stdinClosedEarly, true);
  assert.throws(() => assertSuccess(result, "sh"), {
    code: "TOOL_FAILED",
    message: "sh exited with code 3: gone",
  });
});

Deno.test("assertSuccess() refuses exit 0 when the tool did not read its stdin", async () => {
  const result = await runCommand("sh", {
    args: ["-c", "exec 0<&-; exit 0"],
    stdin: new Uint8Array(2 << 20),
  });
  assert.equal(result.code, 0);
  assert.equal(result.stdinClosedEarly, true);
  assert.throws(() => assertSuccess(result, "fake"), { code: "BROKEN_PIPE" });
});

Deno.test("runCommand() kills a hung child at the timeout and says so", async () => {
  const started = performance.now();
  await assert.rejects(
    runCommand("sleep", { args: ["30"], timeoutMs: 200 }),
    (error: unknown) =>
      error instanceof NetlockError && error.code === "TIMEOUT" &&
      error.message === "sleep did not finish within 0.2 s and was killed",
  );
  assert.ok(performance.now() - started < 10_000);
});

Deno.test("runCommand() kills the child when the AbortSignal fires", async () => {
  const controller = new AbortController();
  const pending = runCommand("sleep", { args: ["30"], signal: controller.signal });
  controller.abort(new Error("stop"));
  await assert.rejects(pending, { name: "NetlockError", code: "ABORTED" });
});

Deno.test("runCommand() reports the signal that killed a child", async () => {
  const result = await runCommand("sh", { args: ["-c", "kill -TERM $$"] });
  assert.equal(result.signal, "SIGTERM");
  assert.equal(result.code, 128 + 15);
  assert.equal(result.success, false);
  assert.equal(describeFailure(result, "sh"), "sh was killed by SIGTERM");
});

Deno.test("runCommand() turns a missing binary into TOOL_NOT_FOUND", async () => {
  await assert.rejects(runCommand("netlock-no-such-binary"), {
    name: "NetlockError",
    code: "TOOL_NOT_FOUND",
    message: "netlock-no-such-binary not found on PATH",
  });
});

Deno.test("runCommand() tells a binary it cannot access from a missing one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // No execute bit at all: execve() fails with EACCES, even for root.
    await Deno.writeTextFile(`${dir}/tool`, "#!/bin/sh\n", { mode: 0o644 });
    await assert.rejects(runCommand(`${dir}/tool`), {
      name: "NetlockError",
      code: "NOT_PERMITTED",
      message: `cannot run ${dir}/tool: permission denied (this user cannot access the binary, ` +
        `a directory on its path, or the working directory ${Deno.cwd()})`,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runCommand() says when the working directory cannot be accessed", async () => {
  // What an unprivileged user meets in a checkout under /root (mode 0700):
  // the inherited working directory cannot be entered (covered as that user
  // in integration_hostile_test.ts). Root meets it in a deleted one.
  const home = Deno.cwd();
  const dir = await Deno.makeTempDir();
  Deno.chdir(dir);
  try {
    await Deno.remove(dir);
    await assert.rejects(runCommand("true"), {
      name: "NetlockError",
      code: "NOT_PERMITTED",
      message: "cannot run true: the working directory cannot be accessed by this user " +
        "(run netlock from a directory it can enter)",
    });
  } finally {
    Deno.chdir(home);
  }
});

Deno.test("runCommand() checks the Deno permission instead of prompting", async () => {
  // A child Deno without --allow-run: the runner must refuse with the flag to add.
  const code = `import { runCommand } from ${
    JSON.stringify(new URL("../lib/exec/runner.ts", import.meta.url).href)
  };
    try { await runCommand("nsenter"); } catch (e) { console.log(e.code + "|" + e.message); }`;
  const child = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-config", `data:application/typescript,${encodeURIComponent(code)}`],
    stdin: "null",
    env: { NO_COLOR: "1" },
  }).output();
  assert.equal(
    new TextDecoder().decode(child.stdout).trim(),
    "DENO_PERMISSION|requires permission to run nsenter: add --allow-run=nsenter " +
      "(if it is given, nsenter is not installed or not on PATH)",
  );
});

Deno.test("runCommand() spawns with an inherited LD_PRELOAD under a scoped --allow-run", async () => {
  const code = `import { runCommand } from ${
    JSON.stringify(new URL("../lib/exec/runner.ts", import.meta.url).href)
  };
    const r = await runCommand("nsenter", { args: ["--", "true"] }); console.log(r.code);`;
  const child = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-config",
      "--allow-run=nsenter",
      `data:application/typescript,${encodeURIComponent(code)}`,
    ],
    stdin: "null",
    env: { LD_PRELOAD: "/nonexistent-preload.so", NO_COLOR: "1" },
  }).output();
  assert.equal(
    new TextDecoder().decode(child.stdout).trim(),
    "0",
    new TextDecoder().decode(child.stderr),
  );
});

Deno.test("describeFailure() skips a bare version banner for the line that says what failed", () => {
  const line = describeFailure({
    argv: ["iptables-restore"],
    code: 1,
    signal: null,
    success: false,
    stdout: "",
    stderr:
      "iptables-restore v1.8.9 (nf_tables): \nline 5: RULE_APPEND failed (Invalid argument)\n",
    stdinClosedEarly: false,
  }, "iptables-restore");
  assert.equal(
    line,
    "iptables-restore exited with code 1: line 5: RULE_APPEND failed (Invalid argument)",
  );
});
