/**
 * Validation of every user-supplied value, before anything runs.
 *
 * Each parser accepts exactly the documented forms and throws a built-in
 * `TypeError` or `RangeError` with a one-line message otherwise. Values that
 * reach a ruleset are validated here so that nothing can be injected into it.
 *
 * @module
 */

/** The highest PID Linux can hand out (`PID_MAX_LIMIT`). */
export const PID_MAX = 4_194_304;
/** The default lock name (CRIU uses `CRIU`). */
export const DEFAULT_NAME = "NETLOCK";
/** CRIU's `SOCCR_MARK`: packets with this mark pass the lock. */
export const DEFAULT_MARK = 0xC114;
/**
 * Netlock's own network namespace as a `--netns` target: nsenter opens
 * `/proc/self/ns/net` as itself (`unlock --all` and `--images` without a
 * target).
 */
export const OWN_NAMESPACE = "/proc/self/ns/net";
/** The default timeout of one spawned tool, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 10_000;

/** Which firewall tool makes the lock. */
export type Backend = "iptables" | "nftables" | "auto";
/**
 * Which lock: the whole namespace, the TCP connections of the target's
 * process tree, or every socket of the target's cgroup v2.
 */
export type Mode = "auto" | "netns" | "connections" | "cgroup";
/** Why `ipv6` goes with the iptables backend only. */
export const IPV6_IS_IPTABLES =
  "--ipv6 is for the iptables backend: the nftables lock is one inet table for both families";

/** Why `mode: "cgroup"` takes no iptables backend. */
export const CGROUP_IS_NFTABLES =
  "--mode cgroup is an nftables lock (iptables cannot match incoming packets by cgroup): " +
  "use -b nftables or -b auto";

/** The modes. */
export const MODES = ["auto", "netns", "connections", "cgroup"] as const;

/** Whether to lock IPv6 too (iptables backend). */
export type Ipv6Choice = "auto" | "on" | "off";

const NAME_PATTERN = /^[A-Za-z][A-Za-z0-9_-]{0,27}$/;

/**
 * Parses a PID: decimal digits only, 1..4194304.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parsePid } from "./options.ts";
 * assert(parsePid("1234") === 1234);
 * ```
 *
 * @param text The PID as typed.
 * @returns The PID as a number.
 */
export function parsePid(text: string): number {
  // No sign, no exponent, no leading zero (which some tools read as octal).
  if (!/^[1-9][0-9]{0,9}$/.test(text)) {
    throw new TypeError(
      `Invalid PID ${quote(text)}: expected a decimal number from 1 to ${PID_MAX}`,
    );
  }
  const pid = Number(text);
  if (pid < 1 || pid > PID_MAX) {
    throw new RangeError(`Invalid PID ${quote(text)}: expected a number from 1 to ${PID_MAX}`);
  }
  return pid;
}

/**
 * Checks a PID given as a number (library callers).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { validatePid } from "./options.ts";
 * assert(validatePid(42) === 42);
 * ```
 *
 * @param pid The PID.
 * @returns The same PID.
 */
export function validatePid(pid: number): number {
  if (!Number.isSafeInteger(pid) || pid < 1 || pid > PID_MAX) {
    throw new RangeError(`Invalid PID ${pid}: expected an integer from 1 to ${PID_MAX}`);
  }
  return pid;
}

/**
 * Parses a packet mark: decimal or `0x` hexadecimal, 1..0xFFFFFFFF. Mark 0 is
 * refused: every packet nobody marked carries it, so a lock that lets it
 * pass would drop nothing.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseMark } from "./options.ts";
 * assert(parseMark("0xC114") === 0xC114);
 * assert(parseMark("49428") === 0xC114);
 * ```
 *
 * @param text The mark as typed.
 * @returns The mark as a number.
 */
export function parseMark(text: string): number {
  // iptables reads a leading 0 as octal: decimal marks may not have one.
  if (!/^(0x[0-9A-Fa-f]{1,8}|0|[1-9][0-9]{0,9})$/.test(text)) {
    throw new TypeError(
      `Invalid mark ${quote(text)}: expected a decimal or 0x-hex number from 1 to 0xFFFFFFFF`,
    );
  }
  if (Number(text) === 0) throw new RangeError(markZero(quote(text)));
  return validateMark(Number(text));
}

/**
 * Checks a mark given as a number (library callers): 1..0xFFFFFFFF.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { validateMark } from "./options.ts";
 * assert(validateMark(0xC114) === 0xC114);
 * ```
 *
 * @param mark The mark.
 * @returns The same mark.
 */
export function validateMark(mark: number): number {
  if (mark === 0) throw new RangeError(markZero("0"));
  if (!Number.isSafeInteger(mark) || mark < 1 || mark > 0xFFFF_FFFF) {
    throw new RangeError(`Invalid mark ${mark}: expected a number from 1 to 0xFFFFFFFF`);
  }
  return mark;
}

function markZero(shown: string): string {
  return `Invalid mark ${shown}: every unmarked packet has mark 0, so nothing would be dropped; ` +
    "expected a number from 1 to 0xFFFFFFFF";
}

/**
 * The mark as netlock prints it in rulesets: `0x` and upper-case hex digits,
 * so the default is CRIU's `0xC114`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatMark } from "./options.ts";
 * assert(formatMark(0xC114) === "0xC114");
 * ```
 *
 * @param mark A validated mark.
 * @returns The mark as `0x...`.
 */
export function formatMark(mark: number): string {
  return `0x${mark.toString(16).toUpperCase()}`;
}

/** The built-in chains of iptables' tables: never a lock's name. */
export const BUILTIN_CHAINS: readonly string[] = [
  "INPUT",
  "OUTPUT",
  "FORWARD",
  "PREROUTING",
  "POSTROUTING",
];

/**
 * Checks a lock name: a letter, then up to 27 letters, digits, `_` or `-`
 * (iptables chain names are at most 28 characters), and not a built-in
 * chain (a lock named INPUT would flush the user's INPUT chain).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { validateName } from "./options.ts";
 * assert(validateName("CRIU") === "CRIU");
 * ```
 *
 * @param name The name.
 * @returns The same name.
 */
export function validateName(name: string): string {
  if (!NAME_PATTERN.test(name)) {
    throw new TypeError(
      `Invalid name ${quote(name)}: expected a letter, then up to 27 letters, digits, '_' or '-'`,
    );
  }
  if (BUILTIN_CHAINS.includes(name)) {
    throw new TypeError(
      `Invalid name ${quote(name)}: a built-in chain (${BUILTIN_CHAINS.join(", ")}) ` +
        "cannot be a lock's name",
    );
  }
  return name;
}

/**
 * Parses `--timeout SECONDS`: a positive decimal number of seconds, at most
 * one day.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseTimeoutSeconds } from "./options.ts";
 * assert(parseTimeoutSeconds("2.5") === 2500);
 * ```
 *
 * @param text The seconds as typed.
 * @returns The timeout in milliseconds.
 */
export function parseTimeoutSeconds(text: string): number {
  if (
    !/^(0|[1-9][0-9]{0,5})(\.[0-9]{1,3})?$/.test(text) || Number(text) <= 0 ||
    Number(text) > 86_400
  ) {
    throw new RangeError(
      `Invalid timeout ${quote(text)}: expected a number of seconds above 0, at most 86400`,
    );
  }
  return Math.round(Number(text) * 1000);
}

/**
 * Checks a timeout in milliseconds (library callers).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { validateTimeoutMs } from "./options.ts";
 * assert(validateTimeoutMs(500) === 500);
 * ```
 *
 * @param ms The timeout.
 * @returns The same timeout.
 */
export function validateTimeoutMs(ms: number): number {
  if (!Number.isFinite(ms) || ms <= 0 || ms > 86_400_000) {
    throw new RangeError(`Invalid timeout ${ms} ms: expected above 0, at most one day`);
  }
  return ms;
}

/**
 * Checks a value against a fixed list of choices (for `--backend`, `--mode`, `--ipv6`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseChoice } from "./options.ts";
 * assert(parseChoice("--ipv6", "on", ["auto", "on", "off"] as const) === "on");
 * ```
 *
 * @param flag The flag name for the message.
 * @param value The value as typed.
 * @param choices The accepted values.
 * @returns The value, typed as one of the choices.
 */
export function parseChoice<T extends string>(
  flag: string,
  value: string,
  choices: readonly T[],
): T {
  if (!(choices as readonly string[]).includes(value)) {
    throw new TypeError(`Invalid ${flag} ${quote(value)}: expected one of ${choices.join(", ")}`);
  }
  return value as T;
}

/**
 * Checks a `--netns` value and turns it into a path: a bare NAME (no `/`)
 * means `/run/netns/NAME`, as `ip netns exec` reads it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resolveNetnsPath } from "./options.ts";
 * assert(resolveNetnsPath("blue") === "/run/netns/blue");
 * assert(resolveNetnsPath("/proc/42/ns/net") === "/proc/42/ns/net");
 * ```
 *
 * @param value The value as typed.
 * @returns An absolute or relative path to a namespace file.
 */
export function resolveNetnsPath(value: string): string {
  // deno-lint-ignore no-control-regex
  if (value === "" || /[\u0000-\u001f\u007f]/.test(value) || value.length > 4096) {
    throw new TypeError(
      `Invalid --netns ${quote(value)}: expected a namespace file path or a name from /run/netns`,
    );
  }
  if (value.includes("/")) return value;
  if (value === "." || value === "..") {
    throw new TypeError(`Invalid --netns ${quote(value)}: not a namespace name`);
  }
  return `/run/netns/${value}`;
}

/**
 * Checks an `--action-script` path: not empty, no control characters.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { validateScriptPath } from "./options.ts";
 * assert(validateScriptPath("/usr/local/bin/hook") === "/usr/local/bin/hook");
 * ```
 *
 * @param path The path as given.
 * @returns The same path.
 */
export function validateScriptPath(path: string): string {
  // deno-lint-ignore no-control-regex
  if (path === "" || /[\u0000-\u001f\u007f]/.test(path) || path.length > 4096) {
    throw new TypeError(`Invalid --action-script ${JSON.stringify(path)}: expected a file path`);
  }
  return path;
}

/** Quotes a user value for a one-line message, escaping control characters. */
function quote(value: string): string {
  const shown = value.length > 64 ? `${value.slice(0, 64)}...` : value;
  return JSON.stringify(shown);
}
