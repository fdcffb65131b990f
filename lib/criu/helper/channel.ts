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
  /**
   * The request lines, until `stop` is aborted or the FIFO ends; called
   * again (a helper that holds on after CRIU), it goes on where the last
   * call stopped: a line read meanwhile is not lost.
   */
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
  const reader = new LineReader(cmd);
  return {
    requests: (stop) => reader.lines(stop),
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

/**
 * The lines of a FIFO, read by one loop of reads across the generators a
 * helper asks for: a read an aborted generator left pending hands its
 * bytes to the next one.
 */
class LineReader {
  #file: Deno.FsFile;
  #decoder = new TextDecoder();
  #buffer = new Uint8Array(4096);
  #pending = "";
  #read?: Promise<number | null>;

  constructor(file: Deno.FsFile) {
    this.#file = file;
  }

  async *lines(signal: AbortSignal): AsyncGenerator<string> {
    const aborted = new Promise<"aborted">((resolve) => {
      if (signal.aborted) resolve("aborted");
      signal.addEventListener("abort", () => resolve("aborted"), { once: true });
    });
    while (!signal.aborted) {
      let newline: number;
      while ((newline = this.#pending.indexOf("\n")) >= 0) {
        const line = this.#pending.slice(0, newline).trim();
        this.#pending = this.#pending.slice(newline + 1);
        if (line) yield line;
        if (signal.aborted) return;
      }
      this.#read ??= this.#file.read(this.#buffer);
      const n = await Promise.race([this.#read, aborted]);
      if (n === "aborted") return;
      this.#read = undefined;
      if (n === null) return;
      this.#pending += this.#decoder.decode(this.#buffer.subarray(0, n), { stream: true });
    }
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await file.write(bytes.subarray(written));
}
