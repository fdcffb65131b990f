/**
 * Running a tool inside a target's network namespace through `nsenter`, the
 * way CRIU does `switch_ns()` + `cr_system()`.
 *
 * Deno cannot `setns()` (it is multi-threaded) and cannot read `/proc`
 * without `--allow-all`, so `nsenter` is the one binary netlock spawns.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { assertSuccess, firstLine, runCommand, type RunResult } from "./runner.ts";

/** Runs TOOL with ARGS (and optional stdin) in one namespace. */
export type ToolExec = (
  tool: string,
  args: readonly string[],
  stdin?: string | ReadableStream<Uint8Array>,
  signal?: AbortSignal,
) => Promise<RunResult>;

/** How every tool of one operation is spawned. */
export interface ExecSettings {
  /** Timeout of each spawned tool in milliseconds. */
  timeoutMs: number;
  /** Cancels running tools. */
  signal?: AbortSignal;
  /** Receives each spawned command and its stderr. */
  log?: (line: string) => void;
}

/**
 * Returns a {@linkcode ToolExec} that runs tools through
 * `nsenter NSENTER_ARGS -- TOOL ARGS...`. With no `nsenterArgs`, the tool
 * runs in netlock's own namespaces (no privilege needed for that).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { nsenterExec } from "./nsenter.ts";
 *
 * const exec = nsenterExec([], { timeoutMs: 5000 });
 * const result = await exec("readlink", ["/proc/self/ns/net"]);
 * assert(result.stdout.startsWith("net:["));
 * ```
 *
 * @param nsenterArgs The namespace flags, e.g. `["--target", "1234", "--net"]`.
 * @param settings Timeout, signal and logger.
 * @param wrapper A command that `exec`s the tool, put before it (the lock's
 *   guard; a script in it shows by name in the `-v` log: `nameScript`).
 * @returns A function that runs one tool in that namespace.
 */
export function nsenterExec(
  nsenterArgs: readonly string[],
  settings: ExecSettings,
  wrapper: readonly string[] = [],
): ToolExec {
  return async (tool, args, stdin, signal) => {
    const env = toolEnv();
    const result = await runCommand("nsenter", {
      args: [...nsenterArgs, "--", ...wrapper, tool, ...args],
      stdin,
      timeoutMs: settings.timeoutMs,
      signal: signal && settings.signal
        ? AbortSignal.any([signal, settings.signal])
        : signal ?? settings.signal,
      log: settings.log,
      env,
      label: tool,
    });
    if (!toolMissing(result) || /^netlock: searched PATH=/m.test(result.stderr)) return result;
    // Say where it was looked for: the PATH given to nsenter, or, when Deno may
    // not read it, the one nsenter inherited (asked of a shell, on this error only).
    const path = env.PATH ?? await inheritedPath(settings);
    return path === undefined
      ? result
      : { ...result, stderr: `${result.stderr}netlock: searched PATH=${path}\n` };
  };
}

/** The PATH netlock's children inherit, asked of a shell: no Deno permission needed. */
async function inheritedPath(settings: ExecSettings): Promise<string | undefined> {
  try {
    const result = await runCommand("nsenter", {
      args: ["--", "/bin/sh", "-c", 'printf %s "$PATH"'],
      timeoutMs: Math.max(settings.timeoutMs, 1000),
      env: toolEnv(),
    });
    return result.success ? result.stdout : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Throws the right {@linkcode NetlockError} for a tool run through nsenter
 * that failed: `TOOL_NOT_FOUND` when nsenter could not execute it,
 * `NOT_PERMITTED` when the kernel refused, else `TOOL_FAILED` /
 * `BROKEN_PIPE` with the tool's exit code and first stderr line.
 *
 * @example
 * ```ts
 * import { assertToolSuccess, nsenterExec } from "./nsenter.ts";
 *
 * const exec = nsenterExec([], { timeoutMs: 5000 });
 * assertToolSuccess(await exec("true", []), "true");
 * ```
 *
 * @param result What the exec returned.
 * @param tool The tool's name, for the message.
 */
export function assertToolSuccess(result: RunResult, tool: string): void {
  if (result.success && !result.stdinClosedEarly) return;
  const stderr = result.stderr;
  if (toolMissing(result)) {
    const path = /^netlock: searched PATH=(.*)$/m.exec(stderr)?.[1];
    throw new NetlockError(
      "TOOL_NOT_FOUND",
      path === undefined
        ? `${tool} not found on PATH (install it, or put its directory on PATH)`
        : `${tool} not found on PATH (${path}): install it, or put its directory on PATH`,
    );
  }
  if (result.code === 126 && /nsenter: failed to execute/.test(stderr)) {
    throw new NetlockError(
      "NOT_PERMITTED",
      `${tool} cannot be run by this user: ${firstLine(stderr)}`,
    );
  }
  if (isPermissionProblem(stderr)) {
    throw new NetlockError(
      "NOT_PERMITTED",
      `needs root (CAP_NET_ADMIN): ${tool} was refused: ${firstLine(stderr)}`,
    );
  }
  assertSuccess(result, tool);
}

/**
 * Whether nsenter could not execute the tool (it is not installed, or not on
 * PATH): nsenter exits 127 and says so.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { toolMissing } from "./nsenter.ts";
 * assert(!toolMissing({
 *   argv: [], code: 1, signal: null, success: false, stdout: "", stderr: "", stdinClosedEarly: false,
 * }));
 * ```
 *
 * @param result What the exec returned.
 * @returns `true` when the tool is missing.
 */
export function toolMissing(result: RunResult): boolean {
  // nsenter says so when it cannot exec the tool; /bin/sh (the lock's guard) too.
  return result.code === 127 &&
    /nsenter: failed to execute|^netlock-guard: [0-9]+: exec: .*: not found$/m.test(result.stderr);
}

/** Whether a tool's stderr says the kernel refused for lack of privilege. */
export function isPermissionProblem(stderr: string): boolean {
  return /Operation not permitted|Permission denied|you must be root/.test(stderr);
}

/**
 * The environment for spawned tools: nsenter looks TOOL up on the child's
 * PATH, so keep the caller's PATH first (tests put fake tools there) and make
 * sure the sbin directories, where iptables and nft live, are on it. Without
 * `--allow-env=PATH` (which cli.ts's shebang grants) the PATH is inherited
 * unchanged: a tool it lacks is reported with that PATH.
 */
function toolEnv(): { PATH?: string } {
  const granted = Deno.permissions.querySync({ name: "env", variable: "PATH" }).state === "granted";
  if (!granted) return {};
  const path = Deno.env.get("PATH") ?? "";
  const parts = path.split(":").filter((part) => part !== "");
  for (const dir of ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]) {
    if (!parts.includes(dir)) parts.push(dir);
  }
  return { PATH: parts.join(":") };
}
