/**
 * The command line: routes the arguments to a command.
 *
 * `cli.ts` runs it from `dist/cli.js`, this file and everything it imports
 * bundled into one (`deno task bundle`): a Deno process loads one file
 * faster than eighty (issue 20; `deno task check` fails when the bundle is
 * not this source's). Its imports are static, here and below: in one file
 * a dynamic import loads nothing later, it only wraps the modules it
 * reaches in functions that V8 compiles on their first call, every run
 * (0.4-1 ms of a cold `lock PID`, docs/benchmarks.md).
 *
 * @module
 */

import {
  commandWord,
  type Invocation,
  jsonRequested,
  parseInvocation,
  usageMessage,
} from "./args.ts";
import { forTargets, images, list, run } from "./commands.ts";
import { helpText } from "./help.ts";
import { jsonUsageError } from "./report.ts";
import { rulesText } from "./rules_text.ts";
import { criuHook, internalEntry } from "../criu/entry.ts";
import { EXIT, printError, readEnv, write } from "../common/output.ts";
import { VERSION } from "../common/version.ts";

/**
 * Runs the CLI with the given arguments and returns the exit code.
 *
 * @param args The arguments after the program name.
 * @returns The process exit code.
 */
export async function main(args: string[]): Promise<number> {
  // As CRIU's action script, netlock runs inside the dump's frozen window:
  // it skips the argument parser.
  if (args.length === 0 && readEnv("CRTOOLS_SCRIPT_ACTION") !== undefined) {
    return await criuHook();
  }
  // criu-hook.sh's internal entry points (`criu-hook --serve`, ...: not
  // user commands).
  if (args[0] === "criu-hook" && args[1]?.startsWith("--")) {
    const entry = internalEntry(args[1]);
    if (entry) return await entry(args.slice(2));
  }
  // The version and the help alone need no parser.
  if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) return await version();
  if (args.length === 1 && (args[0] === "--help" || args[0] === "-h")) return await help();
  let invocation: Invocation;
  try {
    invocation = parseInvocation(args);
  } catch (error) {
    const message = usageMessage(error);
    if (jsonRequested(args)) {
      await write(Deno.stdout, `${jsonUsageError(commandWord(args), message)}\n`);
    }
    printError(message);
    return EXIT.usage;
  }
  switch (invocation.kind) {
    case "help":
      return await help();
    case "version":
      return await version();
    case "rules":
      await write(Deno.stdout, rulesText(invocation.options, invocation.action));
      return EXIT.ok;
    case "hook":
      return await criuHook();
    case "run":
      return await run(
        invocation.target,
        invocation.argv,
        invocation.options,
        invocation.output,
        invocation.hold,
      );
    case "list":
      return await list(invocation.targets, invocation.options, invocation.output);
    case "images": {
      const { command, target, options, output } = invocation;
      return await images(command, invocation.images, target, options, output);
    }
    case "targets": {
      const { command, targets, options, output } = invocation;
      return await forTargets(command, targets, options, output);
    }
  }
}

async function version(): Promise<number> {
  await write(Deno.stdout, `netlock ${VERSION}\n`);
  return EXIT.ok;
}

async function help(): Promise<number> {
  await write(Deno.stdout, helpText(VERSION));
  return EXIT.ok;
}
