/**
 * How the helper that holds a host tree tells that CRIU let the tree run
 * (lib/hold/process_state.ts): the parser on texts as /proc writes them,
 * then the reader on real processes, one of them traced by its parent as
 * CRIU traces what it dumps (and what it kills after a final dump).
 */
import assert from "node:assert/strict";
import { openProcessStateReader, parseProcessState } from "../lib/hold/process_state.ts";

/** A `stat` line of a process named `name`, in state `state`, with flags `flags` and start time 777. */
function stat(state: string, flags = 4194560, name = "python3"): string {
  return `42 (${name}) ${state} 1 42 42 0 -1 ${flags} ${"0 ".repeat(12)}777 0\n`;
}

/** A `status` text with the given TracerPid and pending masks. */
function status(tracer = 0, sigPnd = "0000000000000000", shdPnd = "0000000000000000"): string {
  return `Name:\tpython3\nState:\tS (sleeping)\nTracerPid:\t${tracer}\nSigPnd:\t${sigPnd}\n` +
    `ShdPnd:\t${shdPnd}\n`;
}

Deno.test("parseProcessState: a process out of tracing stop and no longer traced runs", () => {
  assert.equal(parseProcessState(stat("S"), status(), "777"), "runs");
  assert.equal(parseProcessState(stat("R"), status(), "777"), "runs");
  // Stopped by a signal after CRIU let it go (it was stopped when dumped): not CRIU's any more.
  assert.equal(parseProcessState(stat("T"), status(), "777"), "runs");
});

Deno.test("parseProcessState: in tracing stop, or running while still traced, it is CRIU's", () => {
  assert.equal(parseProcessState(stat("t"), status(31), "777"), "frozen");
  // The parasite runs in it, or CRIU killed it and it took its SIGKILL but has not exited yet.
  assert.equal(parseProcessState(stat("R"), status(31), "777"), "frozen");
  assert.equal(parseProcessState(stat("S"), status(31), "777"), "frozen");
});

Deno.test("parseProcessState: killed, exiting, dead or another process is gone", () => {
  assert.equal(parseProcessState(stat("S"), status(0, "0000000000000100"), "777"), "gone");
  assert.equal(parseProcessState(stat("S"), status(31, "0", "0000000000000100"), "777"), "gone");
  assert.equal(parseProcessState(stat("R", 4194560 | 0x4), status(), "777"), "gone");
  assert.equal(parseProcessState(stat("Z"), status(), "777"), "gone");
  assert.equal(parseProcessState(stat("S"), status(), "778"), "gone");
  assert.equal(parseProcessState(stat("S"), "", "777"), "gone");
  assert.equal(parseProcessState("", "", "777"), "gone");
});

Deno.test("parseProcessState: a name with spaces and parentheses", () => {
  assert.equal(parseProcessState(stat("S", 4194560, "a ) b (t)"), status(), "777"), "runs");
  assert.equal(parseProcessState(stat("t", 4194560, "x) S (y"), status(), "777"), "frozen");
});

/** Field 22 of `/proc/PID/stat`: the start time the reader compares. */
async function startTime(pid: number): Promise<string> {
  const text = await Deno.readTextFile(`/proc/${pid}/stat`);
  return text.slice(text.lastIndexOf(")") + 2).trim().split(" ")[19];
}

// The parent forks a child that asks to be traced by it (PTRACE_TRACEME),
// prints both PIDs, and waits for its stdin to close; the child sleeps.
const TRACED = `
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    if libc.ptrace(0, 0, None, None) != 0:
        os._exit(3)
    time.sleep(30)
    os._exit(0)
print(os.getpid(), child, flush=True)
sys.stdin.read()
os.kill(child, 9)
os.waitpid(child, 0)
`;

Deno.test("openProcessStateReader: a traced process is frozen, its untraced parent runs", async () => {
  const python = new Deno.Command("python3", {
    args: ["-c", TRACED],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = openProcessStateReader();
  // Read to the end once the first line is in: its pipe is never closed early.
  const out = python.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let text = "";
    while (!text.includes("\n")) {
      const chunk = await out.read();
      if (chunk.done) break;
      text += chunk.value;
    }
    const [parent, child] = text.trim().split(" ").map(Number);
    // The child is traced once its PTRACE_TRACEME returned: wait for /proc to say so.
    let tracer = "";
    for (let i = 0; i < 200 && tracer !== String(parent); i++) {
      const text = await Deno.readTextFile(`/proc/${child}/status`);
      tracer = text.match(/^TracerPid:\t(\d+)$/m)?.[1] ?? "";
      if (tracer !== String(parent)) await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(tracer, String(parent));
    assert.equal(reader.state(child, await startTime(child)), "frozen");
    assert.equal(reader.state(parent, await startTime(parent)), "runs");
    assert.equal(reader.state(parent, "1"), "gone");
  } finally {
    reader.close();
    await python.stdin.close();
    while (!(await out.read()).done);
    await python.status;
  }
});
