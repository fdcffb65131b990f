/**
 * The one domain error of netlock, with a stable machine-readable code.
 *
 * Bad arguments are reported with the built-in `TypeError` / `RangeError`
 * instead, so that callers can tell misuse from an operation that failed.
 *
 * @module
 */

/**
 * Stable error codes carried by {@linkcode NetlockError}. They appear in the
 * CLI's `--json` output and never change meaning.
 */
export type NetlockErrorCode =
  /** The PID or namespace file does not exist. */
  | "NO_SUCH_TARGET"
  /** The `--netns` path exists but is not a network namespace. */
  | "NOT_A_NAMESPACE"
  /** The operating system refused (not root, no CAP_NET_ADMIN / CAP_SYS_ADMIN). */
  | "NOT_PERMITTED"
  /** A Deno permission is missing (for example `--allow-run=nsenter`). */
  | "DENO_PERMISSION"
  /** The refusal to lock netlock's own network namespace without `force`. */
  | "OWN_NAMESPACE"
  /** `userns` for a process in netlock's own user namespace (nothing to enter). */
  | "OWN_USER_NAMESPACE"
  /**
   * A cgroup lock refused: the root cgroup (every process), netlock's own
   * cgroup (it would cut netlock off), or no cgroup v2.
   */
  | "CGROUP_REFUSED"
  /** A spawned binary was not found. */
  | "TOOL_NOT_FOUND"
  /** A spawned tool exited with a non-zero code or was killed by a signal. */
  | "TOOL_FAILED"
  /** A spawned tool closed its stdin before it read the whole ruleset. */
  | "BROKEN_PIPE"
  /** A spawned tool did not finish within the timeout and was killed. */
  | "TIMEOUT"
  /** The operation was cancelled through its `AbortSignal`. */
  | "ABORTED"
  /** Concurrent changes kept the state moving; the operation gave up. */
  | "CONFLICT"
  /**
   * A chain or table of the lock's name exists and is not a netlock lock:
   * netlock never adopts, rewrites or deletes it.
   */
  | "NAME_IN_USE"
  /** The CRIU hook's environment lacks a valid `CRTOOLS_INIT_PID`. */
  | "INVALID_ENVIRONMENT"
  /** `--images DIR` is not a CRIU image directory netlock can read. */
  | "INVALID_IMAGES";

/**
 * The error thrown by every netlock operation that failed after its
 * arguments were accepted. The message is one line, ready for `error: ...`.
 *
 * @example Tell a missing process from other failures
 * ```ts
 * import assert from "node:assert/strict";
 * import { NetlockError } from "./errors.ts";
 *
 * const error = new NetlockError(
 *   "NO_SUCH_TARGET",
 *   "Cannot lock network of process 4194304: no such process",
 * );
 * assert(error.code === "NO_SUCH_TARGET");
 * assert(error instanceof Error);
 * ```
 */
export class NetlockError extends Error {
  /** The stable code; see {@linkcode NetlockErrorCode}. */
  readonly code: NetlockErrorCode;

  /**
   * Creates an error with a stable code and a one-line message.
   *
   * @param code The stable error code.
   * @param message A one-line description: what failed and why.
   * @param options The standard `cause` option.
   */
  constructor(code: NetlockErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NetlockError";
    this.code = code;
  }
}
