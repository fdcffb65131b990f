/**
 * A strict flag parser that behaves as `node:util`'s `parseArgs` with
 * `strict: true` and `allowPositionals: true`, for the option kinds netlock
 * uses (string and boolean, short aliases, `multiple`), with the same
 * results and the same error messages (tests/flags_test.ts holds the two
 * equal on hundreds of argument lists). Why not `parseArgs` itself: the
 * first `node:` import of a process starts Deno's Node layer, 7-10 ms, a
 * third of the CLI's whole start-up (issue 20). Pure.
 *
 * @module
 */

/** One option: its kind, a one-letter alias, whether it repeats. */
export interface FlagSpec {
  /** `string` takes a value, `boolean` does not. */
  type: "string" | "boolean";
  /** A one-letter alias (`-b`). */
  short?: string;
  /** Repeatable: the values are collected in an array. */
  multiple?: boolean;
}

/** What {@linkcode parseFlags} returns: as `parseArgs`'s `values` and `positionals`. */
export interface ParsedFlags {
  /** Each option given, by its long name: a string, `true`, or an array when `multiple`. */
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  /** The arguments that are not options, in order. */
  positionals: string[];
}

/**
 * Parses `args` against `options`, strictly: an unknown option, a missing
 * value, a value given to a boolean, or a value that looks like an option
 * throws a `TypeError` whose message is `parseArgs`'s.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseFlags } from "./flags.ts";
 *
 * const options = { backend: { type: "string", short: "b" }, quiet: { type: "boolean", short: "q" } } as const;
 * const { values, positionals } = parseFlags(["lock", "-qb", "nftables", "7"], options);
 * assert.deepEqual({ ...values }, { quiet: true, backend: "nftables" });
 * assert.deepEqual(positionals, ["lock", "7"]);
 * assert.throws(() => parseFlags(["--nope"], options), /^TypeError: Unknown option '--nope'/);
 * ```
 *
 * @param args The arguments.
 * @param options The options, by long name.
 * @returns The values and the positionals.
 */
export function parseFlags(
  args: readonly string[],
  options: Readonly<Record<string, FlagSpec>>,
): ParsedFlags {
  const values: ParsedFlags["values"] = { __proto__: null } as unknown as ParsedFlags["values"];
  const positionals: string[] = [];
  const byShort = new Map<string, string>();
  for (const [long, spec] of Object.entries(options)) if (spec.short) byShort.set(spec.short, long);

  const store = (long: string, value: string | boolean): void => {
    if (options[long].multiple) {
      const list = (values[long] ??= []) as (string | boolean)[];
      list.push(value);
    } else values[long] = value;
  };
  // A value taken from the next argument must be there, and must not look like an option.
  const takeNext = (i: number, long: string, asGiven: string): string => {
    const next = args[i];
    if (next === undefined) throw argumentMissing(long, options[long].short);
    if (next.length > 1 && next.startsWith("-")) throw ambiguous(long, asGiven);
    return next;
  };

  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      // `--name=value` (a name of at least one letter), else `--name`.
      const eq = arg.indexOf("=") > 2 ? arg.indexOf("=") : -1;
      const long = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
      if (!Object.hasOwn(options, long)) throw unknownOption(`--${long}`);
      if (options[long].type === "boolean") {
        if (eq !== -1) throw new TypeError(`Option '--${long}' does not take an argument`);
        store(long, true);
      } else {
        store(long, eq === -1 ? takeNext(++i, long, `--${long}`) : arg.slice(eq + 1));
      }
      continue;
    }
    if (arg.length < 2 || !arg.startsWith("-")) {
      positionals.push(arg);
      continue;
    }
    // `-x`, or a group `-xyz`: booleans, until a string option takes the rest.
    for (let j = 1; j < arg.length; j++) {
      const long = byShort.get(arg[j]);
      if (long === undefined) throw unknownOption(`-${arg[j]}`);
      if (options[long].type === "boolean") {
        store(long, true);
      } else {
        store(long, j + 1 < arg.length ? arg.slice(j + 1) : takeNext(++i, long, `-${arg[j]}`));
        break;
      }
    }
  }
  return { values, positionals };
}

function unknownOption(option: string): TypeError {
  return new TypeError(
    `Unknown option '${option}'. To specify a positional argument starting with a '-', ` +
      `place it at the end of the command after '--', as in '-- ${JSON.stringify(option)}`,
  );
}

function argumentMissing(long: string, short: string | undefined): TypeError {
  return new TypeError(`Option '${short ? `-${short}, ` : ""}--${long} <value>' argument missing`);
}

function ambiguous(long: string, asGiven: string): TypeError {
  const ways = asGiven === `--${long}`
    ? `'--${long}=-XYZ'`
    : `'--${long}=-XYZ' or '${asGiven}-XYZ'`;
  return new TypeError(
    `Option '${asGiven}' argument is ambiguous.\nDid you forget to specify the option argument ` +
      `for '${asGiven}'?\nTo specify an option argument starting with a dash use ${ways}.`,
  );
}
