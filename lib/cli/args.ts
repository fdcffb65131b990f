/**
 * Parsing of the command line into an invocation. Pure: every value is
 * validated here, before anything runs; bad input throws `TypeError` or
 * `RangeError` with a one-line message.
 *
 * @module
 */

import { type FlagSpec, parseFlags } from "./flags.ts";
import {
  CGROUP_IS_NFTABLES,
  IPV6_IS_IPTABLES,
  MODES,
  OWN_NAMESPACE,
  parseChoice,
  parseMark,
  parsePid,
  parseTimeoutSeconds,
  PID_MAX,
  resolveNetnsPath,
  validateName,
  validateScriptPath,
} from "../common/options.ts";
import type { NetlockOptions, Target } from "../common/types.ts";

/** How output is printed. */
export interface Output {
  /** One JSON object per target per line. */
  json: boolean;
  /** Nothing on success. */
  quiet: boolean;
  /** Each spawned command and its stderr. */
  verbose: boolean;
}

/** What the command line asks for. */
export type Invocation =
  | { kind: "help" }
  | { kind: "version" }
  | { kind: "hook" }
  | { kind: "rules"; action: "lock" | "unlock"; options: NetlockOptions }
  | {
    kind: "targets";
    command: "lock" | "unlock" | "status";
    targets: Target[];
    options: NetlockOptions;
    output: Output;
  }
  | {
    kind: "run";
    target: Target;
    argv: string[];
    options: NetlockOptions;
    output: Output;
    /** `--hold`: what the lock would drop is held and let through at the unlock. */
    hold: boolean;
  }
  | { kind: "list"; targets: Target[]; options: NetlockOptions; output: Output }
  | {
    kind: "images";
    command: "lock" | "unlock";
    /** The dump's image directory: what it took is locked (or unlocked). */
    images: string;
    target: Target;
    options: NetlockOptions;
    output: Output;
  };

const COMMANDS = ["lock", "unlock", "status", "list", "run", "rules", "criu-hook"] as const;

type Command = Exclude<typeof COMMANDS[number], "criu-hook">;
type Flag =
  | "backend"
  | "mode"
  | "mark"
  | "name"
  | "ipv6"
  | "userns"
  | "force"
  | "criu"
  | "all"
  | "action-script"
  | "timeout"
  | "dry-run"
  | "hold"
  | "images"
  | "json"
  | "quiet"
  | "verbose"
  | "netns";

const TARGET_OUTPUT: Flag[] = ["userns", "timeout", "json", "quiet", "verbose", "netns"];
const LOCKING: Flag[] = ["backend", "mode", "mark", "name", "ipv6", "force", "action-script"];

/**
 * The flags each command takes; any other is refused (exit 2), never
 * ignored. status and unlock take the lock of a name whatever its mark, and
 * whatever its IPv6 choice (which the lock itself records): they take
 * neither `--mark` nor `--ipv6`.
 */
const APPLIES: Record<Command, readonly Flag[]> = {
  lock: [...LOCKING, "dry-run", "images", ...TARGET_OUTPUT],
  run: [...LOCKING, "dry-run", "hold", ...TARGET_OUTPUT],
  unlock: [
    "backend",
    "mode",
    "name",
    "criu",
    "all",
    "action-script",
    "dry-run",
    "images",
    ...TARGET_OUTPUT,
  ],
  status: ["backend", "mode", "name", "criu", ...TARGET_OUTPUT],
  list: ["name", "criu", ...TARGET_OUTPUT],
  rules: ["backend", "mode", "mark", "name", "ipv6"],
};

/** Every flag of every command (which command takes which: {@linkcode APPLIES}). */
export const FLAGS: Readonly<Record<string, FlagSpec>> = {
  backend: { type: "string", short: "b" },
  mode: { type: "string" },
  mark: { type: "string" },
  name: { type: "string" },
  ipv6: { type: "string" },
  userns: { type: "boolean" },
  force: { type: "boolean" },
  criu: { type: "boolean" },
  all: { type: "boolean" },
  "action-script": { type: "string", multiple: true },
  timeout: { type: "string" },
  "dry-run": { type: "boolean" },
  hold: { type: "boolean" },
  images: { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  verbose: { type: "boolean", short: "v" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
  netns: { type: "string", multiple: true },
};

/** The values {@linkcode FLAGS} give. */
type FlagValues = Partial<
  & Record<"action-script" | "netns", string[]>
  & Record<"backend" | "mode" | "mark" | "name" | "ipv6" | "timeout" | "images", string>
  & Record<
    | "userns"
    | "force"
    | "criu"
    | "all"
    | "dry-run"
    | "hold"
    | "json"
    | "quiet"
    | "verbose"
    | "help"
    | "version",
    boolean
  >
>;

/** The most targets one call takes (each is a few spawned processes). */
export const MAX_TARGETS = 4096;

/**
 * Parses the arguments after the program name.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseInvocation } from "./args.ts";
 *
 * const invocation = parseInvocation(["lock", "--json", "1234"]);
 * assert(invocation.kind === "targets" && invocation.targets[0] === 1234);
 * ```
 *
 * @param args The arguments.
 * @returns The invocation.
 */
export function parseInvocation(args: readonly string[]): Invocation {
  // Everything after `--` belongs to `run`'s command, untouched.
  const separator = args.indexOf("--");
  const own = separator === -1 ? [...args] : args.slice(0, separator);
  const commandArgv = separator === -1 ? undefined : args.slice(separator + 1);
  const { values, positionals } = parseFlags(own, FLAGS) as {
    values: FlagValues;
    positionals: string[];
  };
  if (values.help) return { kind: "help" };
  if (values.version) return { kind: "version" };
  const [word, ...rest] = positionals;
  if (word === undefined) {
    throw new TypeError(
      "missing command: lock, unlock, status, list, run or rules (see netlock --help)",
    );
  }
  const command = parseChoice("command", word, COMMANDS);
  if (command === "criu-hook") {
    if (rest.length || commandArgv || Object.keys(values).length) {
      throw new TypeError("criu-hook takes no arguments: it reads CRIU's environment");
    }
    return { kind: "hook" };
  }
  if (commandArgv !== undefined && command !== "run") {
    throw new TypeError(`${command} takes no '--' command (see netlock run)`);
  }
  if (values.all && command !== "unlock") {
    throw new TypeError(
      `--all is an unlock option (unlock --all [TARGET...]); ${command} takes none`,
    );
  }
  if (values.all && values.mode !== undefined) {
    throw new TypeError("--all removes every lock of the namespace: it takes no --mode");
  }
  refuseFlagsThatDoNotApply(command, values);
  const options: NetlockOptions = {
    ...(values.backend === undefined ? {} : {
      backend: parseChoice("--backend", values.backend, ["iptables", "nftables", "auto"] as const),
    }),
    mode: parseChoice("--mode", values.mode ?? "auto", MODES),
    ipv6: parseChoice("--ipv6", values.ipv6 ?? "auto", ["auto", "on", "off"] as const),
    force: values.force ?? false,
    criu: values.criu ?? false,
    userns: values.userns ?? false,
    dryRun: values["dry-run"] ?? false,
    actionScripts: (values["action-script"] ?? []).map(validateScriptPath),
  };
  if (values.all) options.all = true;
  if (options.mode === "cgroup" && options.backend === "iptables") {
    throw new TypeError(CGROUP_IS_NFTABLES);
  }
  if (values.ipv6 !== undefined && (options.backend ?? "iptables") !== "iptables") {
    throw new TypeError(IPV6_IS_IPTABLES);
  }
  if (values.mark !== undefined) options.mark = parseMark(values.mark);
  if (values.name !== undefined) options.name = validateName(values.name);
  if (values.timeout !== undefined) options.timeoutMs = parseTimeoutSeconds(values.timeout);
  if (command === "rules") {
    if (rest.length > 1) throw new TypeError(`unexpected argument ${JSON.stringify(rest[1])}`);
    if (values.netns?.length) throw new TypeError("rules takes no target");
    const action = rest[0] === undefined
      ? "lock"
      : parseChoice("rules action", rest[0], ["lock", "unlock"] as const);
    return { kind: "rules", action, options };
  }
  const targets: Target[] = [
    ...rest.map(parsePid),
    ...(values.netns ?? []).map((value) => ({ netns: resolveNetnsPath(value) })),
  ];
  const output = {
    json: values.json ?? false,
    quiet: values.quiet ?? false,
    verbose: values.verbose ?? false,
  };
  if (values.images !== undefined) {
    return imagesInvocation(command as "lock" | "unlock", values.images, values, targets, {
      options,
      output,
    });
  }
  // `unlock --all` alone removes what `list` alone shows: netlock's own namespace's locks
  // (nsenter opens /proc/self/ns/net as itself: netlock's namespace).
  if (targets.length === 0 && command === "unlock" && options.all) {
    targets.push({ netns: OWN_NAMESPACE });
  }
  if (targets.length === 0 && command !== "list") {
    throw new TypeError(`${command} needs a target: a PID or --netns PATH`);
  }
  if (targets.length > MAX_TARGETS) {
    throw new RangeError(
      `Too many targets (${targets.length}): at most ${MAX_TARGETS} in one call`,
    );
  }
  if (command === "run") {
    if (targets.length !== 1) throw new TypeError("run takes exactly one target");
    if (!commandArgv?.length || commandArgv[0] === "") {
      throw new TypeError("run needs a command after '--': netlock run TARGET -- COMMAND [ARG...]");
    }
    const hold = values.hold ?? false;
    if (hold && (options.backend ?? "iptables") === "nftables") {
      throw new TypeError(
        "--hold holds with the iptables backend (its NFQUEUE target; nft's own queue statement " +
          "is missing from many kernels): drop --backend nftables",
      );
    }
    if (hold && (options.mode === "connections" || options.mode === "cgroup")) {
      throw new TypeError("--hold holds a namespace lock: --mode netns or auto");
    }
    return { kind: "run", target: targets[0], argv: commandArgv, options, output, hold };
  }
  if (command === "list") return { kind: "list", targets, options, output };
  return { kind: "targets", command, targets, options, output };
}

/** What `--images` does not take: it locks what the dump took, by connection. */
const NOT_WITH_IMAGES: Flag[] = [
  "mode",
  "ipv6",
  "action-script",
  "all",
  "criu",
  "force",
  "dry-run",
];

/** `lock --images DIR [TARGET]`, `unlock --images DIR [TARGET]`. */
function imagesInvocation(
  command: "lock" | "unlock",
  images: string,
  values: Partial<Record<Flag, unknown>>,
  targets: Target[],
  { options, output }: { options: NetlockOptions; output: Output },
): Invocation {
  const refused = NOT_WITH_IMAGES.find((flag) => values[flag] !== undefined);
  if (refused !== undefined) {
    throw new TypeError(
      `--images ${command}s what the dump took, by connection: it takes no --${refused}`,
    );
  }
  if (images === "") throw new TypeError("--images needs a CRIU image directory");
  if (targets.length > 1) {
    throw new TypeError(
      `--images takes one target (a PID or --netns PATH; none: netlock's own namespace)`,
    );
  }
  // No target: netlock's own namespace, where a tree on the host's network is locked.
  const target = targets[0] ?? { netns: OWN_NAMESPACE };
  const { mode: _mode, ...rest } = options;
  return { kind: "images", command, images, target, options: rest, output };
}

function refuseFlagsThatDoNotApply(
  command: Command,
  values: Partial<Record<Flag, unknown>>,
): void {
  const given = (Object.keys(values) as Flag[]).filter((flag) => values[flag] !== undefined);
  if (values.quiet && values.verbose) {
    throw new TypeError("-q/--quiet and -v/--verbose contradict each other: give one");
  }
  const refused = given.find((flag) => !APPLIES[command].includes(flag as Flag));
  if (refused === undefined) return;
  if (command === "list") throw new TypeError(`list takes no --${refused}: it shows every lock`);
  if (command === "rules" && refused === "netns") throw new TypeError("rules takes no target");
  const takers = (Object.keys(APPLIES) as Command[]).filter((c) => APPLIES[c].includes(refused));
  const list = takers.length > 1
    ? `${takers.slice(0, -1).join(", ")} and ${takers.at(-1)}`
    : takers[0];
  throw new TypeError(`${command} takes no --${refused} (--${refused} is for ${list})`);
}

/**
 * Whether the arguments ask for JSON output (`--json` before any `--`, for
 * a command that reports), so that a usage error is reported as JSON too.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { jsonRequested } from "./args.ts";
 *
 * assert.equal(jsonRequested(["lock", "--json", "--mark", "0", "1"]), true);
 * assert.equal(jsonRequested(["run", "1", "--", "tool", "--json"]), false);
 * ```
 *
 * @param args The arguments after the program name.
 * @returns `true` when `--json` is among netlock's own arguments.
 */
export function jsonRequested(args: readonly string[]): boolean {
  const separator = args.indexOf("--");
  const own = separator === -1 ? args : args.slice(0, separator);
  // rules prints texts, not reports: its --json is refused, not obeyed.
  return own.includes("--json") && !["rules", "criu-hook"].includes(commandWord(args) ?? "");
}

/**
 * The command word of the arguments (the first that names a command), for
 * reports of usage errors; `undefined` when there is none.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { commandWord } from "./args.ts";
 *
 * assert.equal(commandWord(["--json", "status", "7"]), "status");
 * assert.equal(commandWord(["--json"]), undefined);
 * ```
 *
 * @param args The arguments after the program name.
 * @returns The command, if any.
 */
export function commandWord(args: readonly string[]): string | undefined {
  const separator = args.indexOf("--");
  const own = separator === -1 ? args : args.slice(0, separator);
  return own.find((arg) => (COMMANDS as readonly string[]).includes(arg));
}

/**
 * Turns an argument error into the one line the CLI prints: the parser's
 * messages (node:util's `parseArgs`'s, see ./flags.ts) are shortened and
 * made specific.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { usageMessage } from "./args.ts";
 * assert(usageMessage(new TypeError("Unknown option '--x'. To specify ...")) ===
 *   "unknown option '--x' (see netlock --help)");
 * ```
 *
 * @param error What the parser threw.
 * @returns One line.
 */
export function usageMessage(error: unknown): string {
  const message = (error instanceof Error ? error.message : String(error)).replace(
    /\s*\n\s*/g,
    " ",
  );
  const unknown = message.match(/^Unknown option '([^']*)'/);
  if (unknown) {
    return /^-[0-9]/.test(unknown[1])
      ? `Invalid PID "${unknown[1]}": expected a decimal number from 1 to ${PID_MAX}`
      : `unknown option '${unknown[1]}' (see netlock --help)`;
  }
  const ambiguous = message.match(/^Option '(--?[\w-]+)' argument is ambiguous/);
  if (ambiguous) {
    return `${ambiguous[1]} got a value starting with '-': write ${
      ambiguous[1]
    }=VALUE if you mean it`;
  }
  const missing = message.match(/^Option '(?:-\w, )?(--?[\w-]+)(?: <value>)?' argument missing/);
  if (missing) return `${missing[1]} needs a value`;
  const valued = message.match(/^Option '(--[\w-]+)' does not take an argument/);
  if (valued) return `${valued[1]} takes no value`;
  return message.split(/(?<=\.) /)[0];
}
