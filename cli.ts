#!/usr/bin/env -S deno run --allow-run=nsenter --allow-env=PATH
/**
 * The netlock command line: parses flags, calls the library, prints.
 *
 * ```sh
 * deno run --allow-run=nsenter cli.ts lock 1234
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { mapSettledLimit } from "./lib/concurrency.ts";
import { NetlockError } from "./lib/errors.ts";
import { getLockStatus, lockNetwork, unlockNetwork } from "./lib/operations.ts";
import {
  DEFAULT_MARK,
  DEFAULT_NAME,
  parseChoice,
  parseMark,
  parsePid,
  parseTimeoutSeconds,
  resolveNetnsPath,
  validateName,
} from "./lib/options.ts";
import {
  errorMessage,
  humanSuccess,
  jsonFailure,
  jsonSuccess,
  type ReportCommand,
  type TargetName,
} from "./lib/report.ts";
import { renderIptablesLock, renderIptablesUnlock } from "./lib/iptables/ruleset.ts";
import { renderNftLock, renderNftUnlock } from "./lib/nftables/ruleset.ts";
import { connectionLockName, renderConnectionTemplate } from "./lib/connections/ruleset.ts";
import type { NetlockOptions, OperationResult, Target } from "./lib/types.ts";
import { VERSION } from "./lib/version.ts";

const HELP = `netlock ${VERSION} — freeze and thaw the network of a process (CRIU's network lock)

Usage:
  netlock lock    [options] TARGET...    drop all unmarked traffic of each target
  netlock unlock  [options] TARGET...    remove the lock (succeeds if not locked)
  netlock status  [options] TARGET...    exit 0 if every target is locked, 3 if not
  netlock rules   [lock|unlock] [options]  print the ruleset (--backend nftables:
                                         the nft script); needs no root, no target

TARGET is a PID (its network namespace). --netns PATH adds a namespace file
target (a bare NAME means /run/netns/NAME); repeatable.

Options:
  -b, --backend NAME         iptables (default), nftables, or auto (nftables,
                             falling back to iptables); unlock and status
                             look at both whatever the backend
      --mode MODE            netns: drop all traffic of the target's namespace;
                             connections: drop only the target process's TCP
                             connections (CRIU's rule for processes in the
                             host's namespace); auto (default): connections
                             when the target shares netlock's own namespace,
                             else netns
      --mark N               packets with this mark pass (default 0xC114)
      --name NAME            lock chain name (default NETLOCK; CRIU uses CRIU)
      --ipv6 auto|on|off     lock IPv6 too (default auto: if the kernel has it)
      --force                allow --mode netns on netlock's own namespace
      --criu                 status/unlock: also see and remove locks CRIU
                             itself left (chain CRIU, tables inet CRIU-*)
      --timeout SECONDS      limit for each spawned tool (default 10)
      --dry-run              print the commands and rulesets, change nothing
      --json                 one JSON object per target per line on stdout
  -q, --quiet                print nothing on success
  -v, --verbose              show each spawned command and its stderr
  -h, --help                 show this help
  -V, --version              show the version

Exit codes: 0 success (status: all locked), 1 operation failed (nothing left
half-applied), 2 usage error, 3 status: a target is not locked.

Needs root (CAP_NET_ADMIN) and Deno's --allow-run=nsenter.
`;

const COMMANDS = ["lock", "unlock", "status", "rules"] as const;
type Command = typeof COMMANDS[number];

/** Exit codes of the CLI. */
const EXIT = { ok: 0, failed: 1, usage: 2, notLocked: 3 } as const;

interface Invocation {
  command: Command;
  targets: Target[];
  options: NetlockOptions;
  rulesAction: "lock" | "unlock";
  json: boolean;
  quiet: boolean;
  verbose: boolean;
}

/**
 * Runs the CLI with the given arguments and returns the exit code.
 *
 * @param args The arguments after the program name.
 * @returns The process exit code.
 */
export async function main(args: string[]): Promise<number> {
  let invocation: Invocation | "help" | "version";
  try {
    invocation = parseInvocation(args);
  } catch (error) {
    printError(usageMessage(error));
    return EXIT.usage;
  }
  if (invocation === "help") {
    await write(Deno.stdout, HELP);
    return EXIT.ok;
  }
  if (invocation === "version") {
    await write(Deno.stdout, `netlock ${VERSION}\n`);
    return EXIT.ok;
  }
  if (invocation.command === "rules") return await printRules(invocation);
  return await runTargets(invocation);
}

function parseInvocation(args: string[]): Invocation | "help" | "version" {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      backend: { type: "string", short: "b" },
      mode: { type: "string" },
      mark: { type: "string" },
      name: { type: "string" },
      ipv6: { type: "string" },
      force: { type: "boolean" },
      criu: { type: "boolean" },
      timeout: { type: "string" },
      "dry-run": { type: "boolean" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
      verbose: { type: "boolean", short: "v" },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean", short: "V" },
      netns: { type: "string", multiple: true },
    },
  });
  if (values.help) return "help";
  if (values.version) return "version";
  const [commandWord, ...rest] = positionals;
  if (commandWord === undefined) {
    throw new TypeError("missing command: lock, unlock, status or rules (see netlock --help)");
  }
  const command = parseChoice("command", commandWord, COMMANDS);
  const options: NetlockOptions = {
    backend: parseChoice(
      "--backend",
      values.backend ?? "iptables",
      [
        "iptables",
        "nftables",
        "auto",
      ] as const,
    ),
    mode: parseChoice("--mode", values.mode ?? "auto", ["auto", "netns", "connections"] as const),
    mark: values.mark === undefined ? DEFAULT_MARK : parseMark(values.mark),
    name: values.name === undefined ? DEFAULT_NAME : validateName(values.name),
    ipv6: parseChoice("--ipv6", values.ipv6 ?? "auto", ["auto", "on", "off"] as const),
    force: values.force ?? false,
    criu: values.criu ?? false,
    dryRun: values["dry-run"] ?? false,
  };
  if (values.timeout !== undefined) options.timeoutMs = parseTimeoutSeconds(values.timeout);
  let rulesAction: "lock" | "unlock" = "lock";
  const targets: Target[] = [];
  if (command === "rules") {
    if (rest.length > 1) throw new TypeError(`unexpected argument ${JSON.stringify(rest[1])}`);
    if (rest[0] !== undefined) {
      rulesAction = parseChoice("rules action", rest[0], ["lock", "unlock"] as const);
    }
    if (values.netns?.length) throw new TypeError("rules takes no target");
  } else {
    for (const word of rest) targets.push(parsePid(word));
    for (const value of values.netns ?? []) targets.push({ netns: resolveNetnsPath(value) });
    if (targets.length === 0) {
      throw new TypeError(`${command} needs a target: a PID or --netns PATH`);
    }
  }
  return {
    command,
    targets,
    options,
    rulesAction,
    json: values.json ?? false,
    quiet: values.quiet ?? false,
    verbose: values.verbose ?? false,
  };
}

async function printRules(invocation: Invocation): Promise<number> {
  const rules = { name: invocation.options.name!, mark: invocation.options.mark! };
  const nft = invocation.options.backend !== "iptables";
  const lock = invocation.rulesAction === "lock";
  const connections = invocation.options.mode === "connections";
  const text = connections
    ? (lock
      ? renderConnectionTemplate(nft ? "nftables" : "iptables", rules.name, rules.mark)
      : nft
      ? renderNftUnlock({
        ...rules,
        name: connectionLockName(rules.name, 0).replace("-c0", "-cPID"),
      })
      : renderIptablesUnlock({
        ...rules,
        name: connectionLockName(rules.name, 0).replace("-c0", "-cPID"),
      }))
    : nft
    ? (lock ? renderNftLock(rules) : renderNftUnlock(rules))
    : (lock ? renderIptablesLock(rules) : renderIptablesUnlock(rules));
  await write(Deno.stdout, text);
  return EXIT.ok;
}

async function runTargets(invocation: Invocation): Promise<number> {
  const command = invocation.command as ReportCommand;
  const dryRun = invocation.options.dryRun ?? false;
  const log = dryRun
    ? (line: string) => writeSync(Deno.stdout, `${line}\n`)
    : invocation.verbose
    ? (line: string) => writeSync(Deno.stderr, `${line}\n`)
    : undefined;
  const options = { ...invocation.options, log };
  const operation: (target: Target) => Promise<OperationResult> = command === "lock"
    ? (target: Target) => lockNetwork(target, options)
    : command === "unlock"
    ? (target: Target) => unlockNetwork(target, options)
    : (target: Target) => getLockStatus(target, options);
  const outcomes = await mapSettledLimit(invocation.targets, 8, operation);

  let exitCode: number = EXIT.ok;
  for (const [i, outcome] of outcomes.entries()) {
    const target = invocation.targets[i];
    if (outcome.status === "fulfilled") {
      const result: OperationResult = outcome.value;
      if (invocation.json) await write(Deno.stdout, `${jsonSuccess(command, result)}\n`);
      else if (!invocation.quiet) await write(Deno.stdout, `${humanSuccess(command, result)}\n`);
      if (command === "status" && !result.locked && exitCode === EXIT.ok) exitCode = EXIT.notLocked;
    } else {
      if (invocation.json) {
        await write(Deno.stdout, `${jsonFailure(command, targetName(target), outcome.reason)}\n`);
      }
      printError(errorMessage(outcome.reason));
      const code = isUsageError(outcome.reason) ? EXIT.usage : EXIT.failed;
      if (exitCode === EXIT.ok || exitCode === EXIT.notLocked || code === EXIT.usage) {
        exitCode = code;
      }
    }
  }
  return exitCode;
}

function isUsageError(error: unknown): boolean {
  return error instanceof TypeError || error instanceof RangeError ||
    (error instanceof NetlockError && error.code === "DENO_PERMISSION");
}

function usageMessage(error: unknown): string {
  const message = errorMessage(error);
  // node:util's messages carry a long hint after the first sentence.
  const unknown = message.match(/^Unknown option '([^']*)'/);
  if (unknown) {
    return /^-[0-9]/.test(unknown[1])
      ? `Invalid PID "${unknown[1]}": expected a decimal number from 1 to 4194304`
      : `unknown option '${unknown[1]}' (see netlock --help)`;
  }
  const ambiguous = message.match(/^Option '(--?[\w-]+)' argument is ambiguous/);
  if (ambiguous) {
    return `${ambiguous[1]} got a value starting with '-': write ${
      ambiguous[1]
    }=VALUE if you mean it`;
  }
  return message.split(/(?<=\.) /)[0];
}

function targetName(target: Target): TargetName {
  if (typeof target === "number") return { pid: target };
  return "pid" in target ? { pid: target.pid } : { path: target.netns };
}

function printError(message: string): void {
  const colour = Deno.stderr.isTerminal() && !Deno.noColor;
  writeSync(Deno.stderr, `${colour ? "\x1b[31merror\x1b[0m" : "error"}: ${message}\n`);
}

async function write(stream: typeof Deno.stdout, text: string): Promise<void> {
  try {
    const bytes = new TextEncoder().encode(text);
    let written = 0;
    while (written < bytes.length) written += await stream.write(bytes.subarray(written));
  } catch {
    // A closed pipe (`netlock status | head -1`) is not netlock's failure.
  }
}

function writeSync(stream: typeof Deno.stdout, text: string): void {
  try {
    const bytes = new TextEncoder().encode(text);
    let written = 0;
    while (written < bytes.length) written += stream.writeSync(bytes.subarray(written));
  } catch {
    // See write().
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
