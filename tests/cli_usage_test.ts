/**
 * Bad input on the command line: exit 2, exactly one line `error: ...` on
 * stderr, nothing on stdout, no stack trace. Needs no root: the arguments are
 * refused before anything is spawned.
 */
import assert from "node:assert/strict";
import { cli } from "./helpers/netns.ts";

const BAD_INPUTS: [string, string[], RegExp][] = [
  ["no command", [], /missing command/],
  ["unknown command", ["freeze", "1"], /Invalid command "freeze"/],
  ["lock without target", ["lock"], /lock needs a target/],
  ["letters as PID", ["lock", "abc"], /Invalid PID "abc"/],
  ["PID 0", ["lock", "0"], /Invalid PID "0"/],
  ["negative PID", ["lock", "-5"], /Invalid PID "-5"/],
  ["fractional PID", ["lock", "1.5"], /Invalid PID "1.5"/],
  ["huge PID", ["lock", "99999999999"], /Invalid PID "99999999999"/],
  ["PID above pid_max", ["lock", "4194305"], /Invalid PID "4194305"/],
  ["mark above 32 bits", ["lock", "--mark", "0x1ffffffff", "1"], /Invalid mark "0x1ffffffff"/],
  ["negative mark", ["lock", "--mark=-1", "1"], /Invalid mark "-1"/],
  [
    "mark with newline",
    ["lock", "--mark", "0xC114\n-A INPUT -j ACCEPT", "1"],
    /Invalid mark "0xC114\\n-A INPUT/,
  ],
  ["mark with spaces", ["lock", "--mark", "1 2", "1"], /Invalid mark "1 2"/],
  ["empty name", ["lock", "--name", "", "1"], /Invalid name ""/],
  ["name with space", ["lock", "--name", "a b", "1"], /Invalid name "a b"/],
  ["name with newline", ["lock", "--name", "X\nCOMMIT", "1"], /Invalid name "X\\nCOMMIT"/],
  ["name of 29 characters", ["lock", "--name", "A".repeat(29), "1"], /Invalid name "A{29}"/],
  ["unknown backend", ["lock", "--backend", "foo", "1"], /Invalid --backend "foo"/],
  ["unknown ipv6 choice", ["lock", "--ipv6", "maybe", "1"], /Invalid --ipv6 "maybe"/],
  ["unknown mode", ["lock", "--mode", "all", "1"], /Invalid --mode "all"/],
  ["unknown flag", ["lock", "--frobnicate", "1"], /unknown option '--frobnicate'/],
  ["negative timeout", ["lock", "--timeout", "-1", "1"], /--timeout got a value starting with '-'/],
  ["negative timeout with =", ["lock", "--timeout=-1", "1"], /Invalid timeout "-1"/],
  ["zero timeout", ["lock", "--timeout", "0", "1"], /Invalid timeout "0"/],
  ["flag without value", ["lock", "1", "--mark"], /--mark/],
  ["empty --netns", ["lock", "--netns", ""], /Invalid --netns ""/],
  ["--netns with newline", ["lock", "--netns", "a\nb"], /Invalid --netns "a\\nb"/],
  ["rules with a target", ["rules", "lock", "1"], /unexpected argument|Invalid rules action/],
  ["rules with unknown action", ["rules", "freeze"], /Invalid rules action "freeze"/],
  ["--all on lock", ["lock", "--all", "1"], /--all is an unlock option .*lock takes none/],
  ["--all on status", ["status", "--all", "1"], /--all is an unlock option .*status takes none/],
  ["--all on list", ["list", "--all"], /--all is an unlock option .*list takes none/],
  ["--all on rules", ["rules", "unlock", "--all"], /--all is an unlock option/],
  ["--all with a mode", ["unlock", "--all", "--mode", "connections", "1"], /takes no --mode/],
  ["--all with a value", ["unlock", "--all=yes", "1"], /--all/],
  ["unlock without target", ["unlock"], /unlock needs a target/],
  ["list with letters as PID", ["list", "abc"], /Invalid PID "abc"/],
  ["list with PID 0", ["list", "0"], /Invalid PID "0"/],
  ["list with a mode", ["list", "--mode", "netns", "1"], /list takes no --mode/],
  ["list with a backend", ["list", "-b", "nftables"], /list takes no --backend/],
  ["list with a mark", ["list", "--mark", "7"], /list takes no --mark/],
  ["list with --force", ["list", "--force"], /list takes no --force/],
  ["list with --dry-run", ["list", "--dry-run"], /list takes no --dry-run/],
  ["list with a bad name", ["list", "--name", "a;b"], /Invalid name "a;b"/],
  ["list with an empty --netns", ["list", "--netns", ""], /Invalid --netns ""/],
  ["list with a command", ["list", "--", "true"], /list takes no '--' command/],
  // A mark that cannot tell packets apart would accept every unmarked packet.
  ["mark 0", ["lock", "--mark", "0", "1"], /Invalid mark "0": .*from 1 to 0xFFFFFFFF/],
  ["mark 0x0", ["lock", "--mark", "0x0", "1"], /Invalid mark "0x0"/],
  ["mark 0x00000000", ["run", "--mark=0x00000000", "1", "--", "true"], /Invalid mark/],
  // A built-in chain is never a lock's name.
  ...["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"].map((name) =>
    [
      `name ${name}`,
      ["lock", "--name", name, "1"],
      new RegExp(`Invalid name "${name}": .*built-in chain`),
    ] as [string, string[], RegExp]
  ),
  ["status --name OUTPUT", ["status", "--name", "OUTPUT", "1"], /built-in chain/],
  ["list --name INPUT", ["list", "--name", "INPUT"], /built-in chain/],
  // Flags that do not apply to the command are refused, never ignored.
  ["lock --criu", ["lock", "--criu", "1"], /lock takes no --criu/],
  ["run --criu", ["run", "--criu", "1", "--", "true"], /run takes no --criu/],
  ["status --force", ["status", "--force", "1"], /status takes no --force/],
  ["unlock --force", ["unlock", "--force", "1"], /unlock takes no --force/],
  ["status --dry-run", ["status", "--dry-run", "1"], /status takes no --dry-run/],
  [
    "status --action-script",
    ["status", "--action-script", "/x", "1"],
    /status takes no --action-script/,
  ],
  ["status --ipv6", ["status", "--ipv6", "off", "1"], /status takes no --ipv6/],
  ["unlock --ipv6", ["unlock", "--ipv6", "on", "1"], /unlock takes no --ipv6/],
  ["list --ipv6", ["list", "--ipv6", "on"], /list takes no --ipv6/],
  ["rules --json", ["rules", "--json"], /rules takes no --json/],
  ["rules -v", ["rules", "-v"], /rules takes no --verbose/],
  ["rules -q", ["rules", "unlock", "-q"], /rules takes no --quiet/],
  ["rules --timeout", ["rules", "--timeout", "3"], /rules takes no --timeout/],
  ["rules --userns", ["rules", "--userns"], /rules takes no --userns/],
  ["rules --criu", ["rules", "--criu"], /rules takes no --criu/],
  ["rules --dry-run", ["rules", "--dry-run"], /rules takes no --dry-run/],
  ["-q with -v", ["lock", "-q", "-v", "1"], /-q\/--quiet and -v\/--verbose contradict/],
];

for (const [what, args, message] of BAD_INPUTS) {
  Deno.test(`bad input: ${what} exits 2 with one error line`, async () => {
    const result = await cli(args);
    assert.equal(result.code, 2, result.stderr);
    assert.equal(result.stdout, "");
    const lines = result.stderr.split("\n").filter((line) => line !== "");
    assert.equal(lines.length, 1, result.stderr);
    assert.match(lines[0], /^error: /);
    assert.match(lines[0], message);
    assert.doesNotMatch(result.stderr, /Uncaught| {4}at /);
  });
}

Deno.test("a bad target among good ones refuses the whole call", async () => {
  const result = await cli(["lock", "--netns", "blue", "12", "x"]);
  assert.equal(result.code, 2);
  assert.equal(
    result.stderr,
    'error: Invalid PID "x": expected a decimal number from 1 to 4194304\n',
  );
});

Deno.test("without --allow-run the CLI exits 2 and names the flag to add", async () => {
  const result = await cli(["lock", "--netns", "blue"], { permissions: [] });
  assert.equal(result.code, 2);
  assert.equal(
    result.stderr,
    "error: Cannot lock network of namespace /run/netns/blue: requires permission to run nsenter: " +
      "add --allow-run=nsenter (if it is given, nsenter is not installed or not on PATH)\n",
  );
});

Deno.test("--help goes to stdout and exits 0; --version prints the version", async () => {
  const help = await cli(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^netlock [0-9.]+ — /);
  assert.match(help.stdout, /Exit codes: 0 success/);
  assert.equal(help.stderr, "");
  const version = await cli(["-V"]);
  assert.match(version.stdout, /^netlock [0-9]+\.[0-9]+\.[0-9]+\n$/);
});

Deno.test("rules prints the exact rulesets without root or target", async () => {
  const lock = await cli(["rules", "--name", "CRIU"], { permissions: [] });
  assert.equal(lock.code, 0, lock.stderr);
  assert.equal(
    lock.stdout,
    "*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n" +
      "-A CRIU -m mark --mark 0xC114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n",
  );
  const unlock = await cli(["rules", "unlock", "--mark", "7"], { permissions: [] });
  assert.equal(
    unlock.stdout,
    "*filter\n-D INPUT -j NETLOCK\n-D OUTPUT -j NETLOCK\n-F NETLOCK\n-X NETLOCK\nCOMMIT\n",
  );
});

Deno.test("usage errors with --json: one JSON line on stdout, one error line on stderr, exit 2", async () => {
  for (
    const args of [
      ["lock", "--json", "--mark", "0", "1"],
      ["status", "--json", "--force", "1"],
      ["unlock", "--json", "--frobnicate", "1"],
      ["run", "--json", "1"],
    ]
  ) {
    const result = await cli(args);
    assert.equal(result.code, 2, args.join(" "));
    const lines = result.stdout.split("\n").filter(Boolean);
    assert.equal(lines.length, 1, result.stdout);
    const record = JSON.parse(lines[0]);
    assert.equal(record.command, args[0]);
    assert.equal(record.ok, false);
    assert.equal(record.error.code, "INVALID_ARGUMENT");
    assert.equal(`error: ${record.error.message}\n`, result.stderr);
  }
  // Everything after run's `--` is the command's: its --json is not netlock's.
  const notOurs = await cli(["run", "--mark", "0", "1", "--", "tool", "--json"]);
  assert.equal(notOurs.code, 2);
  assert.equal(notOurs.stdout, "");
});
