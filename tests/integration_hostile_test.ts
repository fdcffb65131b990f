/**
 * Hostile input: every flag, the CRIU hook's environment and every target
 * form, fed injection attempts and numeric edges. Each is refused with exit
 * 2 (or 1 where the target itself is the problem), exactly one `error:`
 * line, and nothing applied to any namespace — the test's nor the host's.
 */
import assert from "node:assert/strict";
import { cli, createNetns, integration, sh, snapshot } from "./helpers/netns.ts";
import { readableCopy } from "./helpers/other_user.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const INJECT = "0xC114\nCOMMIT\n*filter\n-A INPUT -j ACCEPT";

/** [what, args (NS stands for the test namespace), expected exit code] */
const FLAG_CASES: [string, string[], number][] = [
  ["mark with a ruleset injected", ["lock", "--mark", INJECT, "--netns", "NS"], 2],
  ["mark with a newline", ["lock", "--mark", "1\n2", "--netns", "NS"], 2],
  ["mark with spaces", ["lock", "--mark", "0xC114 -j ACCEPT", "--netns", "NS"], 2],
  ["mark with shell metacharacters", ["lock", "--mark", "1;reboot", "--netns", "NS"], 2],
  ["mark -1", ["lock", "--mark=-1", "--netns", "NS"], 2],
  ["mark 2^32", ["lock", "--mark", "4294967296", "--netns", "NS"], 2],
  ["mark 2^64", ["lock", "--mark", "18446744073709551616", "--netns", "NS"], 2],
  ["mark 0x", ["lock", "--mark", "0x", "--netns", "NS"], 2],
  ["mark 1e3", ["lock", "--mark", "1e3", "--netns", "NS"], 2],
  ["mark with a leading zero (octal to iptables)", ["lock", "--mark", "010", "--netns", "NS"], 2],
  ["mark +5", ["lock", "--mark", "+5", "--netns", "NS"], 2],
  ["mark in unicode digits", ["lock", "--mark", "٤٢", "--netns", "NS"], 2],
  ["name with COMMIT injected", ["lock", "--name", "X\nCOMMIT", "--netns", "NS"], 2],
  ["name with *filter injected", ["lock", "--name", "*filter", "--netns", "NS"], 2],
  ["name with a space", ["lock", "--name", "A B", "--netns", "NS"], 2],
  ["name with shell metacharacters", ["lock", "--name", "A$(reboot)", "--netns", "NS"], 2],
  ["name with an nft brace", ["lock", "--name", "A}", "-b", "nftables", "--netns", "NS"], 2],
  ["name of 100 KiB", ["lock", "--name", "A".repeat(100 * 1024), "--netns", "NS"], 2],
  ["empty name", ["lock", "--name", "", "--netns", "NS"], 2],
  ["backend with a newline", ["lock", "--backend", "iptables\n", "--netns", "NS"], 2],
  ["mode all", ["lock", "--mode", "all", "--netns", "NS"], 2],
  ["ipv6 yes", ["lock", "--ipv6", "yes", "--netns", "NS"], 2],
  ["timeout 0", ["lock", "--timeout", "0", "--netns", "NS"], 2],
  ["timeout 1e3", ["lock", "--timeout", "1e3", "--netns", "NS"], 2],
  ["timeout NaN", ["lock", "--timeout", "NaN", "--netns", "NS"], 2],
  ["action script with a newline", ["lock", "--action-script", "/bin/true\n", "--netns", "NS"], 2],
  ["empty action script", ["lock", "--action-script", "", "--netns", "NS"], 2],
  ["PID 0", ["lock", "0"], 2],
  ["PID -1", ["lock", "--", "-1"], 2],
  ["PID 2^32", ["lock", "4294967296"], 2],
  ["PID 2^64", ["lock", "18446744073709551616"], 2],
  ["PID 0x10", ["lock", "0x10"], 2],
  ["PID 1e3", ["lock", "1e3"], 2],
  ["PID with a leading zero", ["lock", "0123"], 2],
  ["PID +5", ["lock", "+5"], 2],
  ["PID in unicode digits", ["lock", "١٢٣"], 2],
  ["PID with shell metacharacters", ["lock", "1;reboot"], 2],
  ["--netns with a newline", ["lock", "--netns", "a\nb"], 2],
  ["--netns empty", ["lock", "--netns", ""], 2],
  ["--netns ..", ["lock", "--netns", ".."], 2],
  ["--userns with a namespace file", ["lock", "--userns", "--netns", "NS"], 2],
  ["unknown flag", ["lock", "--allow-everything", "--netns", "NS"], 2],
  ["too many targets", ["lock", ...Array.from({ length: 5000 }, (_, i) => String(i + 1))], 2],
  ["--netns: a regular file", ["lock", "--netns", "/etc/hostname"], 1],
  ["--netns: a directory", ["lock", "--netns", "/tmp"], 1],
  ["--netns: /dev/zero", ["lock", "--netns", "/dev/zero"], 1],
  ["--netns: a name with shell metacharacters", ["lock", "--netns", "x;reboot"], 1],
  ["--netns: a missing file", ["lock", "--netns", "/run/netns/netlock-none"], 1],
  ["a PID that does not exist", ["lock", "4194304"], 1],
];

/** [what, environment beside PATH, expected exit code] */
const HOOK_CASES: [string, Record<string, string>, number][] = [
  ["NETLOCK_MARK injected", { NETLOCK_MARK: INJECT }, 2],
  ["NETLOCK_MARK 2^32", { NETLOCK_MARK: "4294967296" }, 2],
  ["NETLOCK_NAME injected", { NETLOCK_NAME: "X\nCOMMIT" }, 2],
  ["NETLOCK_NAME with shell metacharacters", { NETLOCK_NAME: "`reboot`" }, 2],
  ["NETLOCK_BACKEND unknown", { NETLOCK_BACKEND: "pf" }, 2],
  ["CRTOOLS_INIT_PID missing", { CRTOOLS_INIT_PID: "" }, 1],
  ["CRTOOLS_INIT_PID not a number", { CRTOOLS_INIT_PID: "12;reboot" }, 1],
  ["CRTOOLS_INIT_PID 0", { CRTOOLS_INIT_PID: "0" }, 1],
  ["CRTOOLS_INIT_PID that does not exist", { CRTOOLS_INIT_PID: "4194304" }, 1],
];

Deno.test({
  ...integration,
  name: `hostile input: ${
    FLAG_CASES.length + HOOK_CASES.length
  } bad inputs, each refused in one line, nothing applied`,
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const hostBefore = (await sh(["nft", "list", "ruleset"])).stdout;
    const failures: string[] = [];
    const check = (what: string, code: number, expected: number, stderr: string) => {
      const lines = stderr.split("\n").filter((line) => line !== "");
      if (code !== expected) {
        failures.push(`${what}: exit ${code}, expected ${expected}: ${stderr}`);
      } else if (lines.length !== 1 || !lines[0].startsWith("error: ")) {
        failures.push(`${what}: ${stderr}`);
      } else if (/Uncaught| {4}at /.test(stderr)) failures.push(`${what}: stack trace`);
    };
    for (const [what, args, expected] of FLAG_CASES) {
      const result = await cli(args.map((arg) => arg === "NS" ? netns.name : arg));
      check(what, result.code, expected, result.stderr);
    }
    for (const [what, env, expected] of HOOK_CASES) {
      const vars = { CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "4194303", ...env };
      const result = await sh([
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        ...Object.entries(vars).map(([k, v]) => `${k}=${v}`),
        CLI,
      ]);
      check(`hook: ${what}`, result.code, expected, result.stderr);
    }
    assert.deepEqual(failures, []);
    assert.equal(await snapshot(netns), before);
    assert.equal(
      (await sh(["nft", "list", "ruleset"])).stdout,
      hostBefore,
      "the host is untouched",
    );
  },
});

Deno.test({
  ...integration,
  name: "an unprivileged user without --userns gets one line saying root is needed",
  async fn() {
    await using netns = await createNetns();
    await using copy = await readableCopy();
    const before = await snapshot(netns);
    const permissions = ["--allow-run=nsenter", "--allow-read"];
    const result = await copy.cli(["lock", "--netns", netns.path], { permissions });
    assert.equal(result.code, 1, result.stderr);
    const lines = result.stderr.split("\n").filter((line) => line !== "");
    assert.equal(lines.length, 1, result.stderr);
    assert.match(
      lines[0],
      /^error: Cannot lock network of namespace .*: not permitted .*needs root \(CAP_SYS_ADMIN to enter, CAP_NET_ADMIN to lock\)/,
    );

    // Started from a directory it cannot enter (a checkout under /root):
    // the real cause, not "nsenter not found". With read permission netlock
    // can tell the directory from the binary; without, it names both.
    const unreachable = await Deno.makeTempDir();
    const prefix = `error: Cannot lock network of namespace ${netns.path}: cannot run nsenter: `;
    await Deno.mkdir(`${unreachable}/checkout`);
    const cases: [string[], string, string][] = [
      // A checkout under /root: Deno cannot even look at the directory.
      [
        ["--allow-run=nsenter"],
        `${unreachable}/checkout`,
        `the working directory ${unreachable}/checkout cannot be accessed by this user ` +
        "(run netlock from a directory it can enter)",
      ],
      [
        permissions,
        unreachable,
        `the working directory ${unreachable} cannot be accessed by this user ` +
        "(run netlock from a directory it can enter)",
      ],
      [
        ["--allow-run=nsenter"],
        unreachable,
        "permission denied (this user cannot access the binary, a directory on its path, " +
        `or the working directory ${unreachable})`,
      ],
    ];
    try {
      for (const [granted, cwd, message] of cases) {
        const fromThere = await copy.cli(["lock", "--netns", netns.path], {
          permissions: granted,
          cwd,
        });
        assert.equal(fromThere.code, 1, fromThere.stderr);
        assert.equal(fromThere.stderr, `${prefix}${message}\n`);
      }
    } finally {
      await Deno.remove(unreachable, { recursive: true });
    }
    assert.equal(await snapshot(netns), before);
  },
});
