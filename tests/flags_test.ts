/**
 * netlock's flag parser (lib/cli/flags.ts) against node:util's `parseArgs`,
 * strict, with positionals, on netlock's own flags: the same values, the
 * same positionals, the same error messages, on chosen cases and on
 * thousands of argument lists drawn from a seeded generator.
 */
import assert from "node:assert/strict";
import { parseArgs } from "node:util";
import { parseFlags } from "../lib/cli/flags.ts";
import { FLAGS, usageMessage } from "../lib/cli/args.ts";

type Outcome = { values: Record<string, unknown>; positionals: string[] } | { error: string };

function viaNode(args: string[]): Outcome {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: FLAGS as NonNullable<Parameters<typeof parseArgs>[0]>["options"],
      strict: true,
      allowPositionals: true,
    });
    return { values: { ...values }, positionals };
  } catch (error) {
    assert.ok(error instanceof TypeError, String(error));
    return { error: error.message };
  }
}

function viaNetlock(args: string[]): Outcome {
  try {
    const { values, positionals } = parseFlags(args, FLAGS);
    return { values: { ...values }, positionals };
  } catch (error) {
    assert.ok(error instanceof TypeError, String(error));
    return { error: error.message };
  }
}

const CHOSEN: string[][] = [
  [],
  ["lock", "1234"],
  ["lock", "-qv", "--json", "7", "--netns", "blue", "--netns=red"],
  ["--nope"],
  ["--nope=3"],
  ["-x"],
  ["-qx"],
  ["-5"],
  ["--backend"],
  ["-b"],
  ["--backend", "-x"],
  ["-b", "-x"],
  ["-qb"],
  ["-qb", "--mark"],
  ["-qbnftables"],
  ["-bq"],
  ["-b=x"],
  ["-q=1"],
  ["--all=yes"],
  ["--all="],
  ["--mark", "-"],
  ["--mark", "--"],
  ["--mark=-1"],
  ["--mark", "1", "--mark", "2"],
  ["-"],
  ["--"],
  ["--", "-q", "--nope"],
  ["---x"],
  ["--=x"],
  ["--backend", ""],
  ["--backend="],
  ["--constructor"],
  ["--__proto__"],
  ["--toString"],
  ["-qq"],
  ["--action-script", "/a", "--action-script=/b"],
  ["-hV"],
  ["--dry-run", "--dry-run"],
];

Deno.test("parseFlags() equals parseArgs on chosen cases", () => {
  for (const args of CHOSEN) {
    assert.deepEqual(viaNetlock(args), viaNode(args), JSON.stringify(args));
  }
});

/** A small seeded generator (mulberry32): the same lists on every run. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TOKENS = [
  "lock",
  "7",
  "",
  "-",
  "--",
  "-q",
  "-v",
  "-qv",
  "-vq",
  "-b",
  "-bnft",
  "-qb",
  "-qbx",
  "-h",
  "-V",
  "-x",
  "-5",
  "-q=1",
  "--backend",
  "--backend=",
  "--backend=-1",
  "--mark",
  "--mark=0x1",
  "--all",
  "--all=1",
  "--netns",
  "--netns=a",
  "--action-script",
  "--json",
  "--dry-run",
  "--nope",
  "--=x",
  "---x",
  "--toString",
  "nftables",
  "-1",
];

Deno.test("parseFlags() equals parseArgs on 5000 generated argument lists", () => {
  const next = random(20);
  for (let n = 0; n < 5000; n++) {
    const args = Array.from(
      { length: Math.floor(next() * 6) },
      () => TOKENS[Math.floor(next() * TOKENS.length)],
    );
    assert.deepEqual(viaNetlock(args), viaNode(args), JSON.stringify(args));
  }
});

Deno.test("usageMessage() turns the parser's errors into the CLI's lines", () => {
  const message = (args: string[]) => {
    const outcome = viaNetlock(args);
    return "error" in outcome ? usageMessage(new TypeError(outcome.error)) : undefined;
  };
  assert.equal(message(["--nope"]), "unknown option '--nope' (see netlock --help)");
  assert.equal(
    message(["status", "-5"]),
    'Invalid PID "-5": expected a decimal number from 1 to 4194304',
  );
  assert.equal(message(["--mark"]), "--mark needs a value");
  assert.equal(message(["-b"]), "--backend needs a value");
  assert.equal(
    message(["--mark", "-1"]),
    "--mark got a value starting with '-': write --mark=VALUE if you mean it",
  );
  assert.equal(message(["--all=yes"]), "--all takes no value");
});
