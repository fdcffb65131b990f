/**
 * Faults injected through the tools themselves: small fake iptables-restore,
 * ip6tables-restore, nft and nsenter placed first on PATH. Whatever the
 * fault, netlock exits with the documented code, prints one `error:` line,
 * and leaves the namespace exactly as it was.
 */
import assert from "node:assert/strict";
import {
  cli,
  countLines,
  createNetns,
  fakeTools,
  integration,
  sh,
  snapshot,
  toolsOnly,
} from "./helpers/netns.ts";

/** A fake tool's script, by fault. */
const FAULTS: Record<string, { script: string; message: RegExp }> = {
  fails: {
    script: "#!/bin/sh\ncat >/dev/null\necho 'injected failure' >&2\nexit 1\n",
    message: /exited with code 1: injected failure$/,
  },
  "exits 0 but does nothing": {
    script: "#!/bin/sh\ncat >/dev/null\nexit 0\n",
    message:
      /exited with code 0 but (the lock is not in place|did not apply the unlock|printed nothing)$/,
  },
  hangs: {
    script: "#!/bin/sh\nexec sleep 30\n",
    message: /did not finish within 0\.5 s and was killed$/,
  },
  "is killed by a signal": {
    script: "#!/bin/sh\nkill -KILL $$\n",
    message: /was killed by SIGKILL$/,
  },
  "closes stdin early": {
    script: "#!/bin/sh\nexec 0<&-\nexit 0\n",
    message:
      /(closed its stdin before reading it all|exited with code 0 but (the lock is not in place|did not apply the unlock|printed nothing))$/,
  },
};

const TOOLS_FOR = { iptables: ["iptables-restore", "ip6tables-restore"], nftables: ["nft"] };

for (const [backend, tools] of Object.entries(TOOLS_FOR)) {
  for (const tool of tools) {
    for (const [fault, { script, message }] of Object.entries(FAULTS)) {
      Deno.test({
        ...integration,
        name:
          `${backend} lock: ${tool} that ${fault} -> exit 1, one error line, namespace as before`,
        async fn() {
          await using netns = await createNetns();
          await using fake = await fakeTools({ [tool]: script });
          const before = await snapshot(netns);
          const result = await cli([
            "lock",
            "-b",
            backend,
            "--timeout",
            "0.5",
            "--netns",
            netns.name,
          ], {
            env: { PATH: fake.path },
          });
          assert.equal(result.code, 1, result.stderr);
          assertOneErrorLine(result.stderr, message);
          assert.equal(await snapshot(netns), before);
        },
      });
    }
  }
}

for (const [fault, { script, message }] of Object.entries(FAULTS)) {
  Deno.test({
    ...integration,
    name: `unlock: nft that ${fault} -> exit 1, one error line, the lock still whole`,
    async fn() {
      await using netns = await createNetns();
      assert.equal((await cli(["lock", "--netns", netns.name])).code, 0);
      const locked = await snapshot(netns);
      await using fake = await fakeTools({ nft: script });
      const result = await cli(["unlock", "--timeout", "0.5", "--netns", netns.name], {
        env: { PATH: fake.path },
      });
      assert.equal(result.code, 1, result.stderr);
      assertOneErrorLine(result.stderr, message);
      assert.equal(await snapshot(netns), locked);
      assert.equal((await cli(["unlock", "--netns", netns.name])).code, 0);
    },
  });
}

Deno.test({
  ...integration,
  name: "missing tools: iptables-restore, nft -> exit 1, one error line, nothing applied",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    const all = [
      "nsenter",
      "stat",
      "iptables",
      "ip6tables",
      "iptables-restore",
      "ip6tables-restore",
      "iptables-save",
      "ip6tables-save",
      "nft",
    ];
    const cases: [string, string[], RegExp][] = [
      [
        "iptables-restore",
        ["-b", "iptables"],
        /iptables-restore not found on PATH \(.*\/tmp\/netlock-tools-/,
      ],
      ["nft", ["-b", "nftables"], /nft not found on PATH \(.*\/tmp\/netlock-tools-/],
    ];
    for (const [missing, args, message] of cases) {
      await using tools = await toolsOnly(all.filter((t) => t !== missing));
      const result = await cli(["lock", ...args, "--netns", netns.name], {
        env: { PATH: tools.path },
      });
      assert.equal(result.code, 1, `${missing}: ${result.stderr}`);
      assertOneErrorLine(result.stderr, message);
      assert.equal(await snapshot(netns), before, missing);
    }
  },
});

Deno.test({
  ...integration,
  name: "tools outside PATH: the line names the binary and the PATH searched, no rollback note",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    // As when a user's PATH lacks /usr/sbin; netlock (run without --allow-env) cannot widen it.
    const path = "/usr/bin:/bin";
    for (const backend of ["iptables", "nftables"]) {
      const tool = backend === "iptables" ? "ip6?tables-restore" : "nft";
      const result = await cli(["lock", "-b", backend, "--netns", netns.name], {
        env: { PATH: path },
      });
      assert.equal(result.code, 1, result.stderr);
      assertOneErrorLine(
        result.stderr,
        new RegExp(`: ${tool} not found on PATH \\(${path}\\)`),
      );
      assert.doesNotMatch(result.stderr, /rollback/);
      assert.equal(await snapshot(netns), before, backend);
    }
  },
});

Deno.test({
  ...integration,
  name: "a timeout that struck before anything was applied: no rollback note",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    for (const backend of ["iptables", "nftables"]) {
      const result = await cli([
        "lock",
        "-b",
        backend,
        "--timeout",
        "0.001",
        "--netns",
        netns.name,
      ]);
      assert.equal(result.code, 1, result.stderr);
      assertOneErrorLine(result.stderr, /did not finish within 0\.001 s and was killed$/);
      assert.equal(await snapshot(netns), before, backend);
    }
  },
});

Deno.test({
  ...integration,
  name:
    "nsenter missing: exit 2 (Deno cannot resolve --allow-run=nsenter), or 1 where PATH can be searched",
  async fn() {
    await using netns = await createNetns();
    const dir = await Deno.makeTempDir({ prefix: "netlock-no-nsenter-" });
    try {
      // Deno itself prints an "Info" line when it cannot resolve a scoped --allow-run.
      const errors = (stderr: string) =>
        stderr.split("\n").filter((line) => line.startsWith("error: "));
      const scoped = await cli(["lock", "--netns", netns.name], { env: { PATH: dir } });
      assert.equal(scoped.code, 2);
      assert.deepEqual(errors(scoped.stderr), [
        `error: Cannot lock network of namespace ${netns.path}: requires permission to run nsenter: ` +
        "add --allow-run=nsenter (if it is given, nsenter is not installed or not on PATH)",
      ]);
      const searchable = await cli(["lock", "--netns", netns.name], {
        env: { PATH: dir },
        permissions: ["--allow-run=nsenter", "--allow-env=PATH", "--allow-read"],
      });
      assert.equal(searchable.code, 1);
      assert.deepEqual(errors(searchable.stderr), [
        `error: Cannot lock network of namespace ${netns.path}: nsenter not found on PATH`,
      ]);
      assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  ...integration,
  name: "a hung nsenter is killed at the timeout; an inherited LD_PRELOAD does not stop netlock",
  async fn() {
    await using netns = await createNetns();
    const before = await snapshot(netns);
    await using fake = await fakeTools({ nsenter: "#!/bin/sh\nexec sleep 30\n" });
    const hung = await cli(["lock", "--timeout", "0.5", "--netns", netns.name], {
      env: { PATH: fake.path },
    });
    assert.equal(hung.code, 1);
    // The lock's first tools run behind the guard inside nsenter: they are what timed out.
    assertOneErrorLine(
      hung.stderr,
      /ip6?tables-restore did not finish within 0\.5 s and was killed$/,
    );
    const preload = await cli(["lock", "--netns", netns.name], {
      env: { LD_PRELOAD: "/netlock-no-such-preload.so" },
    });
    assert.equal(preload.code, 0, preload.stderr);
    assert.equal((await cli(["unlock", "--netns", netns.name])).code, 0);
    assert.equal(await snapshot(netns), before);
  },
});

for (const repair of ["lock", "unlock"]) {
  Deno.test({
    ...integration,
    name: `netlock killed with SIGKILL mid-lock: the next ${repair} repairs the half-state`,
    async fn() {
      await using netns = await createNetns();
      const before = await snapshot(netns);
      const pidFile = await Deno.makeTempFile();
      // IPv4 is applied for real; the IPv6 half hangs until netlock is killed.
      await using fake = await fakeTools({
        "ip6tables-restore": `#!/bin/sh\necho $$ > ${pidFile}\nexec sleep 30\n`,
      });
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-config",
          "--allow-run=nsenter",
          new URL("../cli.ts", import.meta.url).pathname,
          "lock",
          "--netns",
          netns.name,
        ],
        env: { PATH: fake.path },
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      try {
        // Kill netlock only once the half-state is there: IPv4 locked, IPv6 hanging.
        let half = false;
        for (let i = 0; i < 400 && !half; i++) {
          const v4 = countLines((await netns.run(["iptables-save"])).stdout, /-j NETLOCK$/);
          half = v4 === 2 && (await Deno.readTextFile(pidFile)).trim() !== "";
          if (!half) await new Promise((resolve) => setTimeout(resolve, 25));
        }
        assert.ok(half, "netlock never reached the half-applied state within 10 s");
        child.kill("SIGKILL");
        await child.status;
      } finally {
        const hung = (await Deno.readTextFile(pidFile)).trim();
        if (hung) await sh(["kill", "-KILL", hung]);
        await Deno.remove(pidFile);
      }
      const half = await cli(["status", "--json", "--netns", netns.name]);
      assert.equal(half.code, 3, "half-locked");
      assert.equal(JSON.parse(half.stdout).state, "partial");
      const repaired = await cli([repair, "--netns", netns.name]);
      assert.equal(repaired.code, 0, repaired.stderr);
      if (repair === "lock") {
        assert.equal((await cli(["status", "--netns", netns.name])).code, 0);
        assert.equal((await cli(["unlock", "--netns", netns.name])).code, 0);
      }
      assert.equal(await snapshot(netns), before);
    },
  });
}

function assertOneErrorLine(stderr: string, message: RegExp): void {
  const lines = stderr.split("\n").filter((line) => line !== "");
  assert.equal(lines.length, 1, stderr);
  assert.match(lines[0], /^error: Cannot (lock|unlock) network of /);
  assert.match(lines[0], message);
  assert.doesNotMatch(stderr, /Uncaught| {4}at /);
}
