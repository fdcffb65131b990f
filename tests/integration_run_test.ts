/**
 * `netlock run`: lock, run, always unlock — also when the command fails,
 * does not exist, or netlock is told to stop.
 */
import assert from "node:assert/strict";
import { cli, countLines, createNetns, integration, snapshot } from "./helpers/netns.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

Deno.test({
  ...integration,
  name: "run: the command sees the lock, its exit status is passed on, the lock is gone after",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const result = await cli(
      [
        "run",
        "-q",
        "--netns",
        netns.name,
        "--",
        "sh",
        "-c",
        `nsenter --net=${netns.path} iptables-save | grep -c -- '-j NETLOCK$'; exit 7`,
      ],
      { permissions: ["--allow-run=nsenter,sh"] },
    );
    assert.equal(result.code, 7, result.stderr);
    assert.equal(result.stdout, "2\n", "locked while the command ran");
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "run: a command that does not exist exits 127 and leaves nothing locked",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const result = await cli(["run", "--netns", netns.name, "--", "netlock-no-such-command"], {
      permissions: ["--allow-run"],
    });
    assert.equal(result.code, 127);
    assert.match(
      result.stderr,
      /error: cannot run netlock-no-such-command: netlock-no-such-command not found on PATH/,
    );
    assert.equal(await snapshot(netns), before);
  },
});

Deno.test({
  ...integration,
  name: "run: a failed lock does not run the command and exits 125",
  async fn() {
    const result = await cli(["run", "--netns", "netlock-missing", "--", "sh", "-c", "echo ran"], {
      permissions: ["--allow-run=nsenter,sh"],
    });
    assert.equal(result.code, 125);
    assert.equal(result.stdout, "");
    assert.match(
      result.stderr,
      /^error: Cannot lock network of namespace \/run\/netns\/netlock-missing/,
    );
  },
});

for (const [signal, number] of [["SIGTERM", 15], ["SIGINT", 2], ["SIGHUP", 1]] as const) {
  Deno.test({
    ...integration,
    name: `run: ${signal} to netlock reaches the command, then netlock unlocks and exits ${
      128 + number
    }`,
    async fn() {
      await using netns = await createNetns();
      const before = await snapshot(netns);
      const marker = await Deno.makeTempFile();
      const trapped = signal.slice(3);
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-config",
          "--allow-run=nsenter,sh",
          CLI,
          "run",
          "--netns",
          netns.name,
          "--",
          "sh",
          "-c",
          `trap 'kill $!; echo ${trapped} >> ${marker}; exit ${128 + number}' ${trapped}; ` +
          `sleep 30 & echo started > ${marker}; wait`,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).spawn();
      try {
        // Wait until the command runs (it writes the marker), then signal netlock.
        for (let i = 0; i < 200 && !(await Deno.readTextFile(marker)).includes("started"); i++) {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        assert.equal(countLines((await netns.run(["iptables-save"])).stdout, /-j NETLOCK$/), 2);
        child.kill(signal);
        const output = await child.output();
        assert.equal(output.code, 128 + number, new TextDecoder().decode(output.stderr));
        assert.equal(
          await Deno.readTextFile(marker),
          `started\n${trapped}\n`,
          `the command got ${signal}`,
        );
        assert.equal(await snapshot(netns), before, "unlocked");
      } finally {
        await Deno.remove(marker);
      }
    },
  });
}

Deno.test({
  ...integration,
  name: "run: a command it cannot run is named once; a command Deno could not resolve is not found",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const passwd = await cli(["run", "-q", "--netns", netns.name, "--", "/etc/passwd"], {
      permissions: ["--allow-run"],
    });
    assert.equal(passwd.code, 126);
    const lines = passwd.stderr.split("\n").filter(Boolean);
    assert.equal(lines.length, 1, passwd.stderr);
    assert.match(lines[0], /^error: cannot run \/etc\/passwd: permission denied/);
    assert.equal(lines[0].split("cannot run /etc/passwd").length, 2, "said once");
    // --allow-run names it, but it is on no PATH: Deno cannot resolve it. The
    // advice must not be to add what was given.
    const missing = await cli(["run", "--netns", netns.name, "--", "netlock-no-such-cmd"], {
      permissions: ["--allow-run=nsenter,netlock-no-such-cmd"],
    });
    assert.equal(missing.code, 127, missing.stderr);
    const errors = missing.stderr.split("\n").filter((line) => line.startsWith("error: "));
    assert.deepEqual(errors, [
      "error: cannot run netlock-no-such-cmd: netlock-no-such-cmd not found on PATH",
    ]);
    assert.doesNotMatch(missing.stderr, /add --allow-run/);
    // Installed but not permitted: the advice names it.
    const denied = await cli(["run", "--netns", netns.name, "--", "true"]);
    assert.equal(denied.code, 2);
    assert.match(denied.stderr, /^error: requires permission to run true: add --allow-run=true\n$/);
    assert.equal(await snapshot(netns), before, "nothing was locked for any of them");
  },
});

Deno.test({
  ...integration,
  name: "run --json: the lock, the command's outcome and the unlock, each a JSON line",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const ran = await cli(["run", "--json", "--netns", netns.name, "--", "sh", "-c", "exit 3"], {
      permissions: ["--allow-run=nsenter,sh"],
    });
    assert.equal(ran.code, 3, ran.stderr);
    const records = ran.stdout.split("\n").filter(Boolean).map((line) => JSON.parse(line));
    assert.deepEqual(records.map((r) => [r.command, r.ok]), [
      ["lock", true],
      ["run", true],
      ["unlock", true],
    ]);
    assert.equal(records[1].exitCode, 3);
    assert.deepEqual(records[1].argv, ["sh", "-c", "exit 3"]);
    assert.equal(records[2].changed, true);
    assert.equal(ran.stderr, "", "--json replaces the human lines");

    const failed = await cli(["run", "--json", "--netns", "netlock-missing", "--", "true"], {
      permissions: ["--allow-run=nsenter,true"],
    });
    assert.equal(failed.code, 125);
    const failure = JSON.parse(failed.stdout);
    assert.equal(failure.command, "lock");
    assert.equal(failure.ok, false);
    assert.equal(failure.error.code, "NO_SUCH_TARGET");
    assert.equal(await snapshot(netns), before);
  },
});
