/**
 * The process runner, netlock's `cr_system()`: the only place that spawns.
 *
 * It runs an argv (never a shell), feeds stdin from a stream while stdout and
 * stderr are drained, enforces a timeout and an `AbortSignal`, and reports the
 * exit code, the signal name, stdout and stderr without collapsing them.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";

/** Options of {@linkcode runCommand}. */
export interface RunOptions {
  /** Arguments after the command name; passed as argv, never through a shell. */
  args?: readonly string[];
  /**
   * Data for the child's stdin. A string is UTF-8 encoded. Without it, stdin
   * is closed (`/dev/null`).
   */
  stdin?: string | Uint8Array | ReadableStream<Uint8Array>;
  /** Kill the child with SIGKILL after this many milliseconds (default 10000; 0: never). */
  timeoutMs?: number;
  /** Kill the child with SIGKILL when this signal aborts. */
  signal?: AbortSignal;
  /** Extra environment variables for the child (the rest is inherited). */
  env?: Record<string, string>;
  /** Called with one line per spawned command and per stderr line (for `-v`). */
  log?: (line: string) => void;
  /** How timeout and abort messages name the command (default: the command). */
  label?: string;
  /**
   * `inherit`: the child shares netlock's stdin, stdout and stderr (for
   * `netlock run`); `stdin` is ignored and `stdout`/`stderr` come back empty.
   */
  stdio?: "piped" | "inherit";
  /** Signals received by netlock while the child runs are sent on to it. */
  forwardSignals?: readonly Deno.Signal[];
}

/** What a child did: the fields are never collapsed into one number. */
export interface RunResult {
  /** The full argv that ran, command first. */
  argv: string[];
  /** Exit code; 128 + N when killed by signal N, as a shell reports it. */
  code: number;
  /** The name of the signal that killed the child, or `null`. */
  signal: Deno.Signal | null;
  /** `true` when the child exited with code 0. */
  success: boolean;
  /** Everything the child wrote to stdout, decoded as UTF-8. */
  stdout: string;
  /** Everything the child wrote to stderr, decoded as UTF-8. */
  stderr: string;
  /** `true` when the child closed stdin before it read all of it (EPIPE). */
  stdinClosedEarly: boolean;
}

const DEFAULT_TIMEOUT_MS = 10_000;

const PRINTED_BEFORE_KILL = new WeakMap<Error, string>();

function killed(error: NetlockError, stdout: string): NetlockError {
  PRINTED_BEFORE_KILL.set(error, stdout);
  return error;
}

/**
 * What a child printed on stdout before {@linkcode runCommand} killed it
 * (timeout or abort); `undefined` for any other error.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { printedBeforeKill, runCommand } from "./runner.ts";
 *
 * const error = await runCommand("sh", { args: ["-c", "echo started; exec sleep 5"], timeoutMs: 300 })
 *   .catch((e) => e);
 * assert(printedBeforeKill(error) === "started\n");
 * ```
 *
 * @param error What runCommand threw.
 * @returns The child's stdout up to the kill.
 */
export function printedBeforeKill(error: unknown): string | undefined {
  return error instanceof Error ? PRINTED_BEFORE_KILL.get(error) : undefined;
}

/**
 * Runs one command and waits for it, like CRIU's `cr_system()`.
 *
 * Never rejects with a raw Deno error: a missing binary, a missing Deno
 * permission, a timeout and an abort become a {@linkcode NetlockError}
 * (`TOOL_NOT_FOUND`, `DENO_PERMISSION`, `TIMEOUT`, `ABORTED`). A child that
 * fails is not an error here: inspect `code`, `signal` and `stderr`, or use
 * {@linkcode assertSuccess}.
 *
 * @example Feed stdin and read stdout
 * ```ts
 * import assert from "node:assert/strict";
 * import { runCommand } from "./runner.ts";
 *
 * const result = await runCommand("cat", { stdin: "*filter\nCOMMIT\n" });
 * assert(result.success && result.stdout === "*filter\nCOMMIT\n");
 * ```
 *
 * @param command The binary to run, looked up on PATH.
 * @param options Arguments, stdin, timeout, signal, environment and logger.
 * @returns The exit code, signal, stdout and stderr of the child.
 */
export async function runCommand(command: string, options: RunOptions = {}): Promise<RunResult> {
  const args = [...(options.args ?? [])];
  const argv = [command, ...args];
  options.log?.(`+ ${[command, ...args].map(shownArg).join(" ")}`);
  requireRunPermission(command);
  options.signal?.throwIfAborted();

  let child: Deno.ChildProcess;
  try {
    const inherit = options.stdio === "inherit";
    child = new Deno.Command(command, {
      args,
      stdin: inherit ? "inherit" : options.stdin === undefined ? "null" : "piped",
      stdout: inherit ? "inherit" : "piped",
      stderr: inherit ? "inherit" : "piped",
      // Deno refuses a scoped --allow-run while LD_PRELOAD is inherited; a
      // privileged tool has no business inheriting a preload anyway.
      env: { ...options.env, LD_PRELOAD: "" },
    }).spawn();
  } catch (error) {
    throw spawnError(command, error);
  }

  let stopReason: "timeout" | "abort" | undefined;
  const stop = (reason: "timeout" | "abort") => {
    stopReason ??= reason;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited: nothing to kill.
    }
  };
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  // AbortSignal.timeout, not setTimeout: Deno's global setTimeout starts its
  // Node layer on first use, 5-7 ms of a cold CLI.
  const deadline = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
  const onTimeout = () => stop("timeout");
  deadline?.addEventListener("abort", onTimeout, { once: true });
  const onAbort = () => stop("abort");
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const forwarders = (options.forwardSignals ?? []).map((signal) => {
    const forward = () => {
      try {
        child.kill(signal);
      } catch {
        // Already exited.
      }
    };
    Deno.addSignalListener(signal, forward);
    return () => Deno.removeSignalListener(signal, forward);
  });

  try {
    // Let a caller that starts several tools at once spawn the next one now:
    // the first use of Deno's streams below costs a cold process time, which
    // the children already running then overlap.
    await Promise.resolve();
    const piped = options.stdio !== "inherit";
    // `output()` drains stdout and stderr natively while stdin is written: in
    // a cold process far cheaper than reading both streams in JS (about 7 ms
    // over a lock's four tools).
    const [stdinResult, finished] = await Promise.allSettled([
      options.stdin === undefined || !piped
        ? Promise.resolve()
        : feedStdin(options.stdin, child.stdin),
      piped ? child.output() : child.status,
    ]);
    if (finished.status === "rejected") throw finished.reason;
    const decoder = new TextDecoder();
    const captured = piped ? finished.value as Deno.CommandOutput : undefined;
    const printed = captured ? decoder.decode(captured.stdout) : "";
    const stderrText = captured ? decoder.decode(captured.stderr) : "";
    if (options.log) {
      for (const line of stderrText.split("\n")) if (line) options.log(`  ${line}`);
    }
    const label = options.label ?? command;
    if (stopReason === "timeout") {
      throw killed(
        new NetlockError(
          "TIMEOUT",
          `${label} did not finish within ${timeoutMs / 1000} s and was killed`,
        ),
        printed,
      );
    }
    if (stopReason === "abort") {
      throw killed(
        new NetlockError("ABORTED", `${label} was cancelled and killed`, {
          cause: options.signal?.reason,
        }),
        printed,
      );
    }
    const { code, signal } = finished.value;
    return {
      argv,
      code: signal === null ? code : 128 + signalNumber(signal, code),
      signal,
      success: code === 0 && signal === null,
      stdout: printed,
      stderr: stderrText,
      stdinClosedEarly: stdinResult.status === "rejected",
    };
  } finally {
    deadline?.removeEventListener("abort", onTimeout);
    options.signal?.removeEventListener("abort", onAbort);
    for (const remove of forwarders) remove();
  }
}

/**
 * Throws a {@linkcode NetlockError} unless the child exited with code 0 after
 * reading all of its stdin. The message reads
 * `<tool> exited with code N: <first stderr line>`.
 *
 * @example
 * ```ts
 * import { assertSuccess, runCommand } from "./runner.ts";
 *
 * assertSuccess(await runCommand("true"), "true");
 * ```
 *
 * @param result What {@linkcode runCommand} returned.
 * @param tool The name to use in the message (for example `iptables-restore`).
 */
export function assertSuccess(result: RunResult, tool: string): void {
  if (result.success && !result.stdinClosedEarly) return;
  if (result.success) {
    throw new NetlockError(
      "BROKEN_PIPE",
      `${tool} exited with code 0 but closed its stdin before reading it all`,
    );
  }
  throw new NetlockError("TOOL_FAILED", describeFailure(result, tool));
}

/**
 * One line saying how a child failed, for error messages.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { describeFailure } from "./runner.ts";
 *
 * const line = describeFailure({
 *   argv: ["iptables-restore"], code: 1, signal: null, success: false,
 *   stdout: "", stderr: "iptables-restore: line 2 failed\n", stdinClosedEarly: false,
 * }, "iptables-restore");
 * assert(line === "iptables-restore exited with code 1: iptables-restore: line 2 failed");
 * ```
 *
 * @param result What {@linkcode runCommand} returned.
 * @param tool The name to use in the message.
 * @returns `<tool> exited with code N: <first stderr line>` or `<tool> was killed by SIGNAL`.
 */
export function describeFailure(result: RunResult, tool: string): string {
  const how = result.signal === null
    ? `${tool} exited with code ${result.code}`
    : `${tool} was killed by ${result.signal}`;
  const reason = firstLine(result.stderr);
  return reason ? `${how}: ${reason}` : how;
}

/**
 * The first line of a tool's message that says something, trimmed; empty
 * when there is none. A bare version banner (`iptables-restore v1.8.9
 * (nf_tables):`, which iptables prints before the line that failed) is
 * skipped for the line after it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { firstLine } from "./runner.ts";
 *
 * assert.equal(firstLine("\n  nft: No such file\nmore\n"), "nft: No such file");
 * assert.equal(firstLine("iptables-restore v1.8.9 (nf_tables): \nline 3 failed\n"), "line 3 failed");
 * ```
 *
 * @param text A tool's stderr.
 * @returns The line.
 */
export function firstLine(text: string): string {
  const lines = text.split("\n").map((line) => line.trim()).filter((line) => line !== "");
  const banner = /^\S+ v[0-9][\w.-]* \([^)]*\):$/;
  return lines.find((line) => !banner.test(line)) ?? lines[0] ?? "";
}

async function feedStdin(
  input: string | Uint8Array | ReadableStream<Uint8Array>,
  sink: WritableStream<Uint8Array>,
): Promise<void> {
  // pipeTo closes the sink at the end and cancels the source on EPIPE.
  if (input instanceof ReadableStream) return await input.pipeTo(sink);
  const writer = sink.getWriter();
  try {
    await writer.write(typeof input === "string" ? new TextEncoder().encode(input) : input);
    await writer.close();
  } catch (error) {
    // EPIPE: the child closed its stdin early. Close ours too, then say so.
    await writer.abort(error).catch(() => {});
    throw error;
  }
}

function requireRunPermission(command: string): void {
  const state = Deno.permissions.querySync({ name: "run", command }).state;
  if (state === "granted") return;
  // Checked up front so that Deno never prompts on a TTY. A scoped
  // --allow-run=NAME is not granted when Deno cannot find NAME: tell a
  // missing binary from a missing permission where PATH may be read.
  if (!command.includes("/") && onPath(command) === false) {
    throw new NetlockError("TOOL_NOT_FOUND", `${command} not found on PATH`);
  }
  throw new NetlockError(
    "DENO_PERMISSION",
    `requires permission to run ${command}: add --allow-run=${command} ` +
      `(if it is given, ${command} is not installed or not on PATH)`,
  );
}

/** Whether `command` is on PATH; `undefined` when PATH may not be searched. */
function onPath(command: string): boolean | undefined {
  const granted = (descriptor: Deno.PermissionDescriptor) =>
    Deno.permissions.querySync(descriptor).state === "granted";
  if (!granted({ name: "env", variable: "PATH" }) || !granted({ name: "read" })) return undefined;
  return (Deno.env.get("PATH") ?? "").split(":").some((dir) => {
    try {
      return Deno.statSync(`${dir || "."}/${command}`).isFile;
    } catch {
      return false;
    }
  });
}

/**
 * Turns what `Deno.Command.spawn()` threw into one of three failures a user
 * can act on: the binary is not there (`TOOL_NOT_FOUND`), the operating system
 * refused to start it because the binary or the working directory cannot be
 * accessed by this user (`NOT_PERMITTED`), or Deno may not run it
 * (`DENO_PERMISSION`). Deno reports an unreachable working directory as
 * `NotFound` ("No such cwd"), which must not read as a missing binary.
 */
function spawnError(command: string, error: unknown): NetlockError {
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof Deno.errors.NotCapable) {
    return new NetlockError(
      "DENO_PERMISSION",
      `Cannot run ${command}: ${firstLine(message)} (add --allow-run=${command})`,
      { cause: error },
    );
  }
  // "No such cwd '/root/x'" when this user cannot enter it, "failed resolving
  // cwd" when it was deleted.
  const cwd = /No such cwd '([^']*)'|failed resolving cwd/.exec(message);
  if (cwd) {
    const dir = cwd[1] === undefined ? "" : ` ${cwd[1]}`;
    return new NetlockError(
      "NOT_PERMITTED",
      `cannot run ${command}: the working directory${dir} cannot be accessed ` +
        `by this user (run netlock from a directory it can enter)`,
      { cause: error },
    );
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    // Deno reports an unreachable working directory as EACCES, like an
    // unreachable binary: say which where netlock may look (read permission).
    const cwd = currentDir();
    const what = cwdReachable(cwd) === false
      ? `the working directory ${cwd} cannot be accessed by this user (run netlock from ` +
        "a directory it can enter)"
      : "permission denied (this user cannot access the binary, a directory on its path, " +
        `or the working directory${cwd ? ` ${cwd}` : ""})`;
    return new NetlockError("NOT_PERMITTED", `cannot run ${command}: ${what}`, { cause: error });
  }
  if (error instanceof Deno.errors.NotFound) {
    const where = command.includes("/") ? "" : " on PATH";
    return new NetlockError("TOOL_NOT_FOUND", `${command} not found${where}`, { cause: error });
  }
  return new NetlockError("TOOL_FAILED", `Cannot run ${command}: ${firstLine(message)}`, {
    cause: error,
  });
}

function currentDir(): string | undefined {
  try {
    return Deno.cwd();
  } catch {
    return undefined;
  }
}

/**
 * Whether this user can enter `dir`; `undefined` when netlock may not look
 * (no read permission: never make Deno prompt).
 */
function cwdReachable(dir: string | undefined): boolean | undefined {
  if (dir === undefined) return undefined;
  if (Deno.permissions.querySync({ name: "read", path: dir }).state !== "granted") return;
  try {
    // What the child does first; a no-op where it succeeds (the same directory).
    Deno.chdir(dir);
    return true;
  } catch (error) {
    return error instanceof Deno.errors.PermissionDenied ? false : undefined;
  }
}

const SIGNAL_NUMBERS: Partial<Record<Deno.Signal, number>> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
};

function signalNumber(signal: Deno.Signal, code: number): number {
  return SIGNAL_NUMBERS[signal] ?? (code > 128 ? code - 128 : 0);
}

/**
 * The signal a shell's exit status `128 + N` reports (a tool run inside a
 * shell that was killed), or `null`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { shellStatusSignal } from "./runner.ts";
 *
 * assert.equal(shellStatusSignal(137), "SIGKILL");
 * assert.equal(shellStatusSignal(1), null);
 * ```
 *
 * @param status The exit status the shell reported.
 * @returns The signal's name, or `null`.
 */
export function shellStatusSignal(status: number): Deno.Signal | null {
  if (status <= 128) return null;
  const found = Object.entries(SIGNAL_NUMBERS).find(([, number]) => number === status - 128);
  return found ? found[0] as Deno.Signal : null;
}

/** Scripts passed as arguments, shown by their file in the `-v` log. */
const SCRIPT_FILES = new Map<string, string>();

/**
 * Says which file a script passed as an argument (`sh -c SCRIPT`) comes
 * from, so that the `-v` log shows what runs as a command that runs it
 * again from the source tree, `"$(cat FILE)"`, instead of its lines.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { nameScript, runCommand } from "./runner.ts";
 *
 * const script = nameScript("echo one\necho two\n", "lib/two_lines.sh");
 * const lines: string[] = [];
 * await runCommand("sh", { args: ["-c", script, "two"], log: (line) => lines.push(line) });
 * assert.deepEqual(lines, ['+ sh -c "$(cat lib/two_lines.sh)" two']);
 * ```
 *
 * @param script The script's text.
 * @param file The file it comes from, from the source tree's root.
 * @returns The script, unchanged.
 */
export function nameScript(script: string, file: string): string {
  SCRIPT_FILES.set(script, file);
  return script;
}

function shownArg(arg: string): string {
  const file = SCRIPT_FILES.get(arg);
  return file === undefined ? shellQuote(arg) : `"$(cat ${shellQuote(file)})"`;
}

/**
 * Quotes one argument the way a POSIX shell reads it back (for the `-v`
 * log and dry-run traces).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { shellQuote } from "./runner.ts";
 *
 * assert.equal(shellQuote("nft"), "nft");
 * assert.equal(shellQuote("it's"), "'it'\\''s'");
 * ```
 *
 * @param arg The argument.
 * @returns It, quoted where needed.
 */
export function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}
