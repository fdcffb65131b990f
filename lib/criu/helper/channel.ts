/**
 * The helper's end of the hook's request protocol: two FIFOs in the
 * helper's private directory, one request line in `cmd` (`VERB PID`), one
 * answer line in `reply` (`ok`, `ready host|netns`, `error MESSAGE`); and
 * the watch that ends the helper when CRIU is gone.
 *
 * @module
 */

import { runCommand } from "../../exec/runner.ts";
import { WAIT_GONE_SH } from "../../exec/shell_programs.ts";

/** The helper's end of the two FIFOs. */
export interface Channel {
  /** The request lines, until `stop` is aborted or the FIFO ends. */
  requests(stop: AbortSignal): AsyncGenerator<string>;
  /** Writes one answer line (a newline in it becomes a space). */
  answer(line: string): Promise<void>;
  /** Removes the FIFOs (new hooks must not find a helper that no longer answers) and closes them. */
  close(): Promise<void>;
}

/**
 * Opens the FIFOs of `dir`. Both ends open read-write: opening never
 * blocks, a request written before the helper reads it waits in the pipe,
 * and a hook waiting for an answer sees end-of-file when the helper is gone.
 *
 * @example
 * ```ts
 * import { openChannel } from "./channel.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const channel = await openChannel("/run/netlock/criu-4242-123.abcdef");
 *   for await (const line of channel.requests(new AbortController().signal)) {
 *     await channel.answer(line === "exit" ? "ok" : "error unknown request");
 *   }
 *   await channel.close();
 * }
 * ```
 *
 * @param dir The helper's directory, holding `cmd` and `reply`.
 * @returns The channel.
 */
export async function openChannel(dir: string): Promise<Channel> {
  const cmd = await Deno.open(`${dir}/cmd`, { read: true, write: true });
  const reply = await Deno.open(`${dir}/reply`, { read: true, write: true });
  return {
    requests: (stop) => lines(cmd, stop),
    answer: (line) => writeAll(reply, new TextEncoder().encode(`${line.replaceAll("\n", " ")}\n`)),
    async close() {
      for (const fifo of ["cmd", "reply"]) await Deno.remove(`${dir}/${fifo}`).catch(() => {});
      cmd.close();
      reply.close();
    },
  };
}

/** Waits until CRIU (`$1`, started at `$2`) is gone: lib/criu/helper/wait_gone.sh. */
export const WAIT_GONE_SCRIPT: string = WAIT_GONE_SH;

/**
 * Aborts `stop` when CRIU's process ends (see {@linkcode WAIT_GONE_SCRIPT}).
 *
 * @param criuPid CRIU's PID.
 * @param criuStart CRIU's start time (field 22 of its stat), when known.
 * @param stop Aborted once CRIU is gone.
 */
export function watchCriu(
  criuPid: number,
  criuStart: string | undefined,
  stop: AbortController,
): void {
  runCommand("nsenter", {
    args: ["--", "sh", "-c", WAIT_GONE_SCRIPT, "netlock-wait", String(criuPid), criuStart ?? ""],
    timeoutMs: 0,
    signal: stop.signal,
  }).then(() => stop.abort(), () => stop.abort());
}

async function* lines(file: Deno.FsFile, signal: AbortSignal): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(4096);
  let pending = "";
  const aborted = new Promise<null>((resolve) => {
    if (signal.aborted) resolve(null);
    signal.addEventListener("abort", () => resolve(null), { once: true });
  });
  while (!signal.aborted) {
    const n = await Promise.race([file.read(buffer), aborted]);
    if (n === null) return;
    pending += decoder.decode(buffer.subarray(0, n), { stream: true });
    let newline: number;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, newline).trim();
      pending = pending.slice(newline + 1);
      if (line) yield line;
    }
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await file.write(bytes.subarray(written));
}
