/**
 * Rootless containers: an unprivileged user locks the network of a
 * namespace they made with `unshare -Urn`, with `--userns`, without root.
 */
import assert from "node:assert/strict";
import { integration, must, probe, sh, startServer, type TestNetns } from "./helpers/netns.ts";
import { NOBODY, readableCopy } from "./helpers/other_user.ts";

for (const backend of ["iptables", "nftables"]) {
  Deno.test({
    ...integration,
    name: `${backend}: an unprivileged user locks their own rootless namespace with --userns`,
    async fn() {
      await using copy = await readableCopy();
      // The "container": a user and network namespace owned by nobody.
      const container = new Deno.Command("setpriv", {
        args: [
          `--reuid=${NOBODY}`,
          `--regid=${NOBODY}`,
          "--clear-groups",
          "unshare",
          "-Urn",
          "sleep",
          "120",
        ],
        stdin: "null",
      }).spawn();
      try {
        const pid = await waitForOwnNetns(container.pid);
        const netns: TestNetns = {
          name: `pid ${pid}`,
          path: `/proc/${pid}/ns/net`,
          run: (argv) => sh(["nsenter", `--net=/proc/${pid}/ns/net`, "--", ...argv]),
          [Symbol.asyncDispose]: async () => {},
        };
        await must(["nsenter", `--net=/proc/${pid}/ns/net`, "--", "ip", "link", "set", "lo", "up"]);
        await using _server = await startServer(netns, ["127.0.0.1:7000"]);
        const asNobody = (args: string[]) => copy.cli(args);
        assert.equal(await probe(netns, "127.0.0.1", 7000), "ok");

        const refused = await asNobody(["lock", "-b", backend, String(pid)]);
        assert.equal(refused.code, 1);
        assert.match(
          refused.stderr,
          /^error: Cannot lock network of process [0-9]+: not permitted .*needs root.*--userns/,
        );

        const locked = await asNobody(["lock", "--userns", "-b", backend, "--json", String(pid)]);
        assert.equal(locked.code, 0, locked.stderr);
        assert.equal(JSON.parse(locked.stdout).backend, backend);
        assert.equal(await probe(netns, "127.0.0.1", 7000, 1000), "timeout");
        assert.equal((await asNobody(["status", "--userns", String(pid)])).code, 0);

        const unlocked = await asNobody(["unlock", "--userns", String(pid)]);
        assert.equal(unlocked.code, 0, unlocked.stderr);
        assert.equal(await probe(netns, "127.0.0.1", 7000), "ok");
        assert.equal((await netns.run(["nft", "list", "ruleset"])).stdout, "");
      } finally {
        container.kill("SIGKILL");
        await container.status;
      }
    },
  });
}

/** setpriv execs unshare, which execs sleep: same PID, once its namespace differs from ours. */
async function waitForOwnNetns(pid: number): Promise<number> {
  const ours = (await must(["readlink", "/proc/self/ns/net"])).trim();
  for (let i = 0; i < 100; i++) {
    const theirs = await sh(["readlink", `/proc/${pid}/ns/net`]);
    const comm = await sh(["cat", `/proc/${pid}/comm`]);
    if (theirs.stdout.trim() !== ours && comm.stdout.trim() === "sleep") return pid;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error("the rootless namespace did not come up");
}
