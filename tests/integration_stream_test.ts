/**
 * Nothing is lost: two namespaces joined by a veth pair, a sender streams a
 * few MiB of a counter pattern to a receiver, and the receiver's side is
 * locked for 2 s mid-stream. TCP retransmits what was dropped: every byte
 * arrives, in order, and the connection is not reset.
 */
import assert from "node:assert/strict";
import {
  cli,
  createNetns,
  integration,
  must,
  spawnDenoTool,
  type TestNetns,
} from "./helpers/netns.ts";

const STREAM_TOOL = new URL("./helpers/stream_tool.ts", import.meta.url).pathname;
const BYTES = 4 * 1024 * 1024;

async function link(a: TestNetns, b: TestNetns): Promise<void> {
  const suffix = `${Deno.pid % 10000}${Math.floor(Math.random() * 1000)}`;
  await must([
    "ip",
    "link",
    "add",
    `nla${suffix}`,
    "netns",
    a.name,
    "type",
    "veth",
    "peer",
    "name",
    `nlb${suffix}`,
    "netns",
    b.name,
  ]);
  await must(["ip", "-n", a.name, "addr", "add", "198.19.0.1/30", "dev", `nla${suffix}`]);
  await must(["ip", "-n", b.name, "addr", "add", "198.19.0.2/30", "dev", `nlb${suffix}`]);
  await must(["ip", "-n", a.name, "link", "set", `nla${suffix}`, "up"]);
  await must(["ip", "-n", b.name, "link", "set", `nlb${suffix}`, "up"]);
}

function spawnIn(netns: TestNetns, args: string[]): Deno.ChildProcess {
  return spawnDenoTool(netns, STREAM_TOOL, args);
}

const MODES: [string, string[]][] = [
  ["iptables", ["--backend", "iptables"]],
  ["nftables", ["--backend", "nftables"]],
  ["connection mode (nftables)", ["--mode", "connections", "--backend", "nftables"]],
  ["connection mode (iptables)", ["--mode", "connections", "--backend", "iptables"]],
];

for (const [what, options] of MODES) {
  Deno.test({
    ...integration,
    name: `${what}: a 4 MiB stream locked for 2 s mid-way arrives whole, in order, not reset`,
    async fn() {
      await using sender = await createNetns();
      await using receiver = await createNetns();
      await link(sender, receiver);
      const rx = spawnIn(receiver, ["receive", "198.19.0.2:7200", String(BYTES)]);
      // Every line the receiver prints, with the time it arrived.
      const seen: { at: number; line: string }[] = [];
      const reading = (async () => {
        let buffered = "";
        for await (const chunk of rx.stdout.pipeThrough(new TextDecoderStream())) {
          buffered += chunk;
          let at;
          while ((at = buffered.indexOf("\n")) !== -1) {
            seen.push({ at: performance.now(), line: buffered.slice(0, at) });
            buffered = buffered.slice(at + 1);
          }
        }
      })();
      const waitFor = async (test: (line: string) => boolean) => {
        for (let i = 0; i < 3000 && !seen.some((s) => test(s.line)); i++) {
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
        const found = seen.find((s) => test(s.line));
        if (!found) {
          throw new Error(
            `receiver never printed the line wanted; it printed ${JSON.stringify(seen)}`,
          );
        }
        return found.line;
      };
      try {
        await waitFor((line) => line === "ready");
        // 64 KiB every 15 ms: about 4 MiB/s, so the stream lasts past the lock.
        const tx = spawnIn(sender, ["send", "198.19.0.2", "7200", String(BYTES), "15"]);
        await waitFor((line) =>
          line.startsWith("progress ") && Number(line.split(" ")[1]) >= 1024 * 1024
        );

        const target = options.includes("connections")
          ? [String(rx.pid)]
          : ["--netns", receiver.name];
        const locked = await cli(["lock", "--json", ...options, ...target]);
        assert.equal(locked.code, 0, locked.stderr);
        if (options.includes("connections")) assert.equal(JSON.parse(locked.stdout).connections, 1);
        const lockedAt = performance.now();
        await new Promise((resolve) => setTimeout(resolve, 2000));
        const unlockStarted = performance.now();
        const unlocked = await cli(["unlock", ...options, ...target]);
        assert.equal(unlocked.code, 0, unlocked.stderr);

        const result = JSON.parse(await waitFor((line) => line.startsWith("{")));
        assert.deepEqual(result, { bytes: BYTES, ok: true, error: "" });
        const sent = new TextDecoder().decode((await tx.output()).stdout).trim();
        assert.deepEqual(JSON.parse(sent), { sent: BYTES });
        // The lock really stopped the stream: no progress while it held, and
        // the stream was still going (progress after the unlock, then its end).
        const during = seen.filter((s) =>
          s.line.startsWith("progress ") && s.at > lockedAt + 300 && s.at < unlockStarted
        );
        assert.deepEqual(during, [], "bytes flowed while locked");
        const after = seen.filter((s) => s.line.startsWith("progress ") && s.at > unlockStarted);
        assert.ok(after.length > 0, "the stream had ended before the lock: nothing was tested");
        const end = seen.find((s) => s.line.startsWith("{"))!;
        assert.ok(end.at > unlockStarted, "the stream ended while locked");
        await reading;
      } finally {
        try {
          rx.kill("SIGKILL");
        } catch { /* exited */ }
        await rx.status;
      }
    },
  });
}
