/**
 * Whether a process CRIU froze runs again, read from its `/proc/PID/stat`
 * and `/proc/PID/status` through libc (Deno's FFI, which a holder has
 * anyway: Deno reads nothing under /proc without --allow-all), so that a
 * holder polls it every few milliseconds without starting a process.
 * CRIU keeps a tree in tracing stop (`t`) until it lets it go: detached to
 * run on (`--leave-running`, a failed dump), after it took its sockets out
 * of repair mode; or, after a final dump, killed (SIGKILL while still
 * stopped, and still traced: CRIU does not detach what it kills).
 *
 * @module
 */

/** What a frozen process is now. */
export type ProcessState = "frozen" | "runs" | "gone";

/** SIGKILL (9) in a pending-signal mask. */
const SIGKILL_BIT = 1n << 8n;
/** PF_EXITING in the flags of `stat` (field 9). */
const PF_EXITING = 0x4;

/**
 * Reads a process's state from its `stat` and `status` texts: `frozen` in
 * tracing stop, or still traced (a tracer it can see: CRIU running its
 * parasite, or a process CRIU killed on its way out, which may look running
 * for a moment once it took its SIGKILL); `runs` out of it, no longer
 * traced, alive, not exiting and with no SIGKILL pending; `gone` otherwise,
 * or when its start time (field 22) is not `start` (the PID is another
 * process's).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseProcessState } from "./process_state.ts";
 *
 * const stat = (state: string) =>
 *   `42 (python3) ${state} 1 42 42 0 -1 4194560 ${"0 ".repeat(12)}777 0\n`;
 * const status = "Name:\tpython3\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n";
 * assert.equal(parseProcessState(stat("t"), status, "777"), "frozen");
 * assert.equal(parseProcessState(stat("S"), status, "777"), "runs");
 * assert.equal(parseProcessState(stat("S"), status, "778"), "gone");
 * assert.equal(parseProcessState(stat("S"), status.replace("ShdPnd:\t0000000000000000", "ShdPnd:\t0000000000000100"), "777"), "gone");
 * assert.equal(parseProcessState(stat("R"), `${status}TracerPid:\t31\n`, "777"), "frozen");
 * ```
 *
 * @param stat `/proc/PID/stat` (empty: no such process).
 * @param status `/proc/PID/status`.
 * @param start The start time it had when it was frozen.
 * @returns Its state.
 */
export function parseProcessState(stat: string, status: string, start: string): ProcessState {
  // The name in parentheses may hold anything: the fields count from its end.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).trim().split(" ");
  // fields[0] is field 3 (the state), fields[6] field 9 (flags), fields[19] field 22 (start).
  if (fields.length < 20 || fields[19] !== start) return "gone";
  const state = fields[0];
  if (state === "t") return "frozen";
  if (state === "Z" || state === "X" || state === "x") return "gone";
  if ((Number(fields[6]) & PF_EXITING) !== 0) return "gone";
  let traced = false;
  for (const line of status.split("\n")) {
    const [key, value] = line.split(":\t");
    if ((key === "SigPnd" || key === "ShdPnd") && /^[0-9a-f]+$/.test(value ?? "")) {
      if ((BigInt(`0x${value}`) & SIGKILL_BIT) !== 0n) return "gone";
    }
    if (key === "TracerPid" && value !== undefined && value.trim() !== "0") traced = true;
  }
  if (!status) return "gone";
  return traced ? "frozen" : "runs";
}

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

/** A reader of processes' states through libc. */
export interface ProcessStateReader {
  /** The state of process `pid`, which had start time `start` when frozen. */
  state(pid: number, start: string): ProcessState;
  /** Closes libc. */
  close(): void;
}

/**
 * Opens libc to read processes' states (throws without --allow-ffi).
 *
 * @example
 * ```ts
 * import { openProcessStateReader } from "./process_state.ts";
 *
 * // Needs --allow-ffi: type-checked here, not run.
 * export function example(): void {
 *   const reader = openProcessStateReader();
 *   console.log(reader.state(4242, "123456"));
 *   reader.close();
 * }
 * ```
 *
 * @returns The reader.
 */
export function openProcessStateReader(): ProcessStateReader {
  const library = Deno.dlopen("libc.so.6", SYMBOLS);
  const c = library.symbols;
  const buffer = new Uint8Array(4096);
  const decoder = new TextDecoder();
  const readText = (path: string): string => {
    const fd = c.open(new TextEncoder().encode(`${path}\0`) as Uint8Array<ArrayBuffer>, 0);
    if (fd < 0) return "";
    try {
      const n = Number(c.read(fd, buffer, BigInt(buffer.length)));
      return n > 0 ? decoder.decode(buffer.subarray(0, n)) : "";
    } finally {
      c.close(fd);
    }
  };
  return {
    state(pid, start) {
      const stat = readText(`/proc/${pid}/stat`);
      return stat ? parseProcessState(stat, readText(`/proc/${pid}/status`), start) : "gone";
    },
    close: () => library.close(),
  };
}
