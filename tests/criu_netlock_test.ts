import assert from "node:assert/strict";

const WRAPPER = new URL("../criu-netlock", import.meta.url).pathname;

/** Runs argv with exactly `env` (nothing inherited): as podman runs a runtime's CRIU. */
async function run(argv: string[], env: Record<string, string>) {
  const out = await new Deno.Command(argv[0], { args: argv.slice(1), env, clearEnv: true })
    .output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("criu-netlock install: the NETLOCK_* values set then are the installed criu's defaults", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nltest-install-" });
  try {
    // A CRIU that says what it was given.
    const fake = `${dir}/real-criu`;
    await Deno.writeTextFile(
      fake,
      '#!/bin/sh\necho "backend=$NETLOCK_BACKEND name=$NETLOCK_NAME hold=$NETLOCK_HOLD args=$*"\n',
      { mode: 0o755 },
    );
    await Deno.mkdir(`${dir}/bin`);
    const path = "/usr/bin:/bin";
    const installed = await run([WRAPPER, "install", `${dir}/bin`], {
      PATH: path,
      NETLOCK_CRIU: fake,
      NETLOCK_BACKEND: "nftables",
      NETLOCK_NAME: "POD_LOCK",
      NETLOCK_HOLD: "1",
    });
    assert.equal(installed.code, 0, installed.stderr);
    // No environment at all: the defaults hold.
    const bare = await run([`${dir}/bin/criu`, "dump", "-t", "1"], { PATH: path });
    assert.equal(bare.code, 0, bare.stderr);
    assert.match(bare.stdout, /^backend=nftables name=POD_LOCK hold=1 args=--network-lock skip /);
    // A caller's own value wins.
    const chosen = await run([`${dir}/bin/criu`, "dump"], {
      PATH: path,
      NETLOCK_BACKEND: "iptables",
    });
    assert.match(chosen.stdout, /^backend=iptables name=POD_LOCK /);
    // A value netlock would refuse is refused at install, and nothing is written.
    await Deno.mkdir(`${dir}/other`);
    const bad = await run([WRAPPER, "install", `${dir}/other`], {
      PATH: path,
      NETLOCK_CRIU: fake,
      NETLOCK_BACKEND: "nft;reboot",
    });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^criu-netlock: error: NETLOCK_BACKEND=nft;reboot: /);
    assert.deepEqual([...Deno.readDirSync(`${dir}/other`)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
