/**
 * Every lock netlock made is visible and removable: `status` and `unlock`
 * of a PID in auto mode see its connection lock too, `list` shows every
 * lock of a namespace (exited PIDs included), and `unlock --all` restores
 * the namespace exactly, from outside the namespace and from inside it.
 */
import assert from "node:assert/strict";
import { CRIU_IPTABLES_LOCK } from "./helpers/criu_texts.ts";
import {
  cli,
  cliInside,
  createNetns,
  inNamespace,
  integration,
  sh,
  snapshot,
  startEndpoint,
} from "./helpers/netns.ts";

async function mustRun(run: Promise<{ code: number; stdout: string; stderr: string }>) {
  const result = await run;
  assert.equal(result.code, 0, result.stderr);
  return result;
}

const jsonLines = (text: string) =>
  text.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));

for (const backend of ["iptables", "nftables"]) {
  Deno.test({
    ...integration,
    name: `${backend}: status and unlock of a PID see the connection lock made from outside`,
    async fn() {
      await using netns = await createNetns();
      await using _server = await startEndpoint(netns, ["server", "127.0.0.1:7100"]);
      await using client = await startEndpoint(netns, ["client", "127.0.0.1", "7100", "3"]);
      const pid = String(client.pid);
      const before = await snapshot(netns);
      await mustRun(cli(["lock", "--mode", "connections", "-b", backend, pid]));

      const status = await cli(["status", "--json", pid]);
      assert.equal(status.code, 0, "a connection lock counts as locked");
      const report = JSON.parse(status.stdout);
      assert.equal(report.state, "locked");
      assert.equal(report.mode, "connections");
      assert.deepEqual(report.kinds, ["connections"]);
      assert.equal(report.connections, 3);
      assert.equal(report.backend, backend);
      const human = await cli(["status", pid]);
      assert.match(
        human.stdout,
        new RegExp(`: locked \\(.*NETLOCK-c${pid} \\(3 connections\\)\\)`),
      );

      const unlocked = await mustRun(cli(["unlock", "--json", pid]));
      assert.equal(JSON.parse(unlocked.stdout).changed, true);
      assert.deepEqual(JSON.parse(unlocked.stdout).kinds, ["connections"]);
      assert.equal(await snapshot(netns), before);
      assert.equal((await cli(["status", pid])).code, 3);
      // Traffic of the connections flows again.
      assert.equal(await client.ask("send x"), "done");
      assert.equal(await client.ask("check x 5000"), "ok");
    },
  });

  Deno.test({
    ...integration,
    name:
      `${backend}: both kinds seen; list shows exited PIDs; unlock --all from outside restores exactly`,
    async fn() {
      await using netns = await createNetns();
      await using _server = await startEndpoint(netns, ["server", "127.0.0.1:7100"]);
      await using a = await startEndpoint(netns, ["client", "127.0.0.1", "7100", "2"]);
      await using b = await startEndpoint(netns, ["client", "127.0.0.1", "7100", "1"]);
      const before = await snapshot(netns);
      for (const client of [a, b]) {
        await mustRun(cli(["lock", "--mode", "connections", "-b", backend, String(client.pid)]));
      }
      await mustRun(cli(["lock", "-b", backend, "--netns", netns.name]));
      // CRIU's own leftover, for --criu.
      await inNamespace(netns, ["iptables-restore", "--noflush"], CRIU_IPTABLES_LOCK);

      const status = JSON.parse((await mustRun(cli(["status", "--json", String(a.pid)]))).stdout);
      assert.deepEqual(status.kinds, ["netns", "connections"]);
      assert.equal(status.mode, "netns");
      assert.equal(status.connections, 2);

      await b.kill();
      const listed = jsonLines(
        (await mustRun(cli(["list", "--json", "--netns", netns.name]))).stdout,
      );
      const families = ["ipv4", "ipv6"];
      const where = { path: netns.path, netns: listed[0]?.target.netns };
      assert.match(where.netns, /^net:\[[0-9]+\]$/);
      assert.deepEqual(listed, [
        { command: "list", target: where, kind: "netns", name: "NETLOCK", backend, families },
        ...[[a.pid, true, 2], [b.pid, false, 1]].map(([pid, alive, connections]) => ({
          command: "list",
          target: where,
          kind: "connections",
          name: `NETLOCK-c${pid}`,
          backend,
          families,
          pid,
          alive,
          connections,
        })),
      ]);
      const withCriu = jsonLines(
        (await mustRun(cli(["list", "--criu", "--json", "--netns", netns.name]))).stdout,
      );
      assert.deepEqual(withCriu.slice(0, 3), listed);
      assert.deepEqual(withCriu.slice(3).map((l) => [l.kind, l.name, l.backend]), [
        ["criu", "CRIU", "iptables"],
      ]);
      const table = (await mustRun(cli(["list", "--netns", netns.name]))).stdout.split("\n");
      assert.match(
        table[0],
        /^NAMESPACE +KIND +NAME +BACKEND +FAMILIES +PID +ALIVE +CONNECTIONS +LISTENERS +HOLDS$/,
      );
      // (`--mode connections` locks connections only: no listener.)
      assert.match(
        table[3],
        new RegExp(`connections +NETLOCK-c${b.pid} +${backend} .* no +1 +0 +-$`),
      );

      // The PID's unlock takes its namespace lock and its connection lock, nothing else.
      const unlocked = JSON.parse((await mustRun(cli(["unlock", "--json", String(a.pid)]))).stdout);
      assert.deepEqual(unlocked.kinds, ["netns", "connections"]);
      const left = jsonLines(
        (await mustRun(cli(["list", "--json", "--netns", netns.name]))).stdout,
      );
      assert.deepEqual(left.map((l) => l.name), [`NETLOCK-c${b.pid}`]);

      await mustRun(cli(["lock", "-b", backend, "--netns", netns.name]));
      const all = await mustRun(
        cli(["unlock", "--all", "--criu", "--json", "--netns", netns.name]),
      );
      const removed = JSON.parse(all.stdout);
      assert.deepEqual(removed.removed.sort(), ["NETLOCK", `NETLOCK-c${b.pid}`].sort());
      assert.deepEqual(removed.criu.iptables, ["ipv4"]);
      assert.equal(await snapshot(netns), before);
      const none = await mustRun(cli(["list", "--netns", netns.name]));
      assert.equal(none.stdout, `no locks named NETLOCK in namespace ${netns.path}\n`);
      assert.equal((await mustRun(cli(["list", "--json", "--netns", netns.name]))).stdout, "");
    },
  });

  Deno.test({
    ...integration,
    name: `${backend}: inside the namespace, list and unlock --all see netlock's own namespace`,
    async fn() {
      await using netns = await createNetns();
      await using _server = await startEndpoint(netns, ["server", "127.0.0.1:7100"]);
      await using client = await startEndpoint(netns, ["client", "127.0.0.1", "7100", "2"]);
      const pid = String(client.pid);
      const before = await snapshot(netns);
      // Auto mode inside: the client shares netlock's namespace, its connections are locked.
      await mustRun(cliInside(netns, ["lock", "-b", backend, pid]));
      await mustRun(cliInside(netns, ["lock", "-b", backend, "--mode", "netns", "--force", pid]));
      // A PID in netlock's own namespace: only its connection lock is looked for.
      const status = JSON.parse(
        (await mustRun(cliInside(netns, ["status", "--json", pid]))).stdout,
      );
      assert.deepEqual(status.kinds, ["connections"]);

      const listed = jsonLines((await mustRun(cliInside(netns, ["list", "--json"]))).stdout);
      assert.deepEqual(listed.map((l) => [l.kind, l.name, l.backend, l.alive]), [
        ["netns", "NETLOCK", backend, undefined],
        ["connections", `NETLOCK-c${pid}`, backend, true],
      ]);
      assert.deepEqual(listed[0].target, { netns: listed[0].target.netns }, "no target given");

      const all = JSON.parse(
        (await mustRun(cliInside(netns, ["unlock", "--all", "--json", pid]))).stdout,
      );
      assert.deepEqual(all.removed.sort(), ["NETLOCK", `NETLOCK-c${pid}`].sort());
      assert.equal(await snapshot(netns), before);
      assert.match(
        (await mustRun(cliInside(netns, ["list"]))).stdout,
        /^no locks named NETLOCK in netlock's own namespace\n$/,
      );
    },
  });
}

Deno.test({
  ...integration,
  name: "list of a process that exited fails with one line; other targets are still listed",
  async fn() {
    await using netns = await createNetns();
    const gone = await sh(["sh", "-c", "sleep 0 & echo $!; wait"]);
    const pid = gone.stdout.trim();
    const result = await cli(["list", "--json", pid, "--netns", netns.name]);
    assert.equal(result.code, 1);
    assert.equal(
      result.stderr,
      `error: Cannot list the locks of process ${pid}: no such process\n`,
    );
    for (const bad of [["--netns", "/etc/passwd"], ["--netns", "/nonexistent"], ["4194304"]]) {
      const refused = await cli(["list", ...bad]);
      assert.equal(refused.code, 1);
      assert.equal(refused.stdout, "");
      assert.match(refused.stderr, /^error: Cannot list the locks of [^\n]+: [^\n]+\n$/);
    }
    assert.deepEqual(jsonLines(result.stdout), [{
      command: "list",
      target: { pid: Number(pid) },
      ok: false,
      error: {
        code: "NO_SUCH_TARGET",
        message: `Cannot list the locks of process ${pid}: no such process`,
      },
    }]);
  },
});
