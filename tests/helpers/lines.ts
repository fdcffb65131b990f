/**
 * Reading a child's output line by line without ever closing its pipe
 * early. A child that writes after the line a test waits for (a newline
 * written apart from its word: Python's `print` under `PYTHONUNBUFFERED=1`
 * is one write per piece) dies of a broken pipe if the test cancels the
 * stream after a partial read. So a reader here hands out whole lines only,
 * and once the test has what it wants, `drain()` reads the rest to the end.
 */

/** Whole lines of a stream, then the rest drained. */
export interface LineReader {
  /** The next whole line (without its newline); `undefined` at the end of the stream. */
  next(): Promise<string | undefined>;
  /** Reads and drops everything left, to the end of the stream (once the child is done). */
  drain(): Promise<void>;
}

/**
 * Reads `stream` as lines.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { lineReader } from "./lines.ts";
 *
 * const child = new Deno.Command("sh", { args: ["-c", "printf 're'; printf 'ady\\nmore\\n'"], stdout: "piped" }).spawn();
 * const lines = lineReader(child.stdout);
 * assert.equal(await lines.next(), "ready");
 * await lines.drain();
 * assert.equal((await child.status).code, 0);
 * ```
 */
export function lineReader(stream: ReadableStream<Uint8Array>): LineReader {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let ended = false;
  let draining: Promise<void> | undefined;
  return {
    async next() {
      while (!buffered.includes("\n")) {
        if (ended) return undefined;
        const { value, done } = await reader.read();
        if (done) {
          ended = true;
          if (buffered === "") return undefined;
          const last = buffered;
          buffered = "";
          return last;
        }
        buffered += value;
      }
      const at = buffered.indexOf("\n");
      const line = buffered.slice(0, at);
      buffered = buffered.slice(at + 1);
      return line;
    },
    drain() {
      draining ??= (async () => {
        buffered = "";
        while (!ended) ended = (await reader.read()).done;
        reader.releaseLock();
      })();
      return draining;
    },
  };
}
