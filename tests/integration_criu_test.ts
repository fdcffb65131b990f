/**
 * netlock as CRIU drives it: the CRIU hook (cli.ts run directly, with no
 * arguments, in an environment of only PATH and CRTOOLS_*), and
 * `--action-script` with CRIU's contract.
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
  startSleeper,
} from "./helpers/netns.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

Deno.test({
  ...integration,
  name: "CRIU hook: pre-dump, network-lock, post-dump, network-unlock, as CRIU runs the script",
  async fn() {
    await using netns = await createNetns();
    await using sleeper = await startSleeper(netns);
    const before = await snapshot(netns);
    const hook = (action: string, extra: Record<string, string> = {}) =>
      sh([
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        `CRTOOLS_SCRIPT_ACTION=${action}`,
        `CRTOOLS_INIT_PID=${sleeper.pid}`,
        "CRTOOLS_IMAGE_DIR=/tmp",
        ...Object.entries(extra).map(([k, v]) => `${k}=${v}`),
        CLI,
      ]);
    const jumps = async () =>
      countLines((await netns.run(["iptables-save"])).stdout, /-j NETLOCK$/);

    const steps: [string, number][] = [["pre-dump", 0], ["network-lock", 2], ["post-dump", 2], [
      "network-unlock",
      0,
    ]];
    for (const [action, expected] of steps) {
      const result = await hook(action);
      assert.equal(result.code, 0, `${action}: ${result.stderr}`);
      assert.equal(result.stdout + result.stderr, "", `${action} is silent`);
      assert.equal(await jumps(), expected, `rules after ${action}`);
    }
    assert.equal(await snapshot(netns), before);

    const nft = await hook("network-lock", {
      NETLOCK_BACKEND: "nftables",
      NETLOCK_NAME: "CKPT",
      NETLOCK_MARK: "0x1",
    });
    assert.equal(nft.code, 0, nft.stderr);
    assert.match(
      (await netns.run(["nft", "list", "table", "inet", "CKPT"])).stdout,
      /meta mark 0x00000001 accept/,
    );
    assert.equal((await hook("network-unlock", { NETLOCK_NAME: "CKPT" })).code, 0);
    assert.equal(await snapshot(netns), before);

    const noPid = await sh([
      "env",
      "-i",
      "PATH=/usr/bin:/bin",
      "CRTOOLS_SCRIPT_ACTION=network-lock",
      CLI,
    ]);
    assert.equal(noPid.code, 1);
    assert.equal(noPid.stderr, "error: CRIU action network-lock: CRTOOLS_INIT_PID is not set\n");
    const badName = await hook("network-lock", { NETLOCK_NAME: "a b" });
    assert.equal(badName.code, 2);
    assert.match(badName.stderr, /^error: NETLOCK_NAME: Invalid name "a b"/);
    assert.equal(await snapshot(netns), before, "nothing applied by the failing calls");
    const other = await sh([
      "env",
      "-i",
      "PATH=/usr/bin:/bin",
      "CRTOOLS_SCRIPT_ACTION=post-restore",
      CLI,
    ]);
    assert.equal(other.code, 0, "other actions need no PID and do nothing");
  },
});

Deno.test({
  ...integration,
  name: "--action-script runs before the rules are applied and before they are removed",
  async fn() {
    await using netns = await createNetns();
    const dir = await Deno.makeTempDir({ prefix: "netlock-scripts-" });
    try {
      const log = `${dir}/log`;
      const record = `${dir}/record.sh`;
      // Records its environment and whether the lock is in place right now.
      await Deno.writeTextFile(
        record,
        `#!/bin/sh\nn=$(nsenter --net="$NETLOCK_NETNS" -- iptables-save | grep -c -- '-j NETLOCK$')\n` +
          `echo "$CRTOOLS_SCRIPT_ACTION pid=\${CRTOOLS_INIT_PID-none} netns=$NETLOCK_NETNS jumps=$n $#" >> ${log}\n`,
        { mode: 0o755 },
      );
      const fail = `${dir}/fail.sh`;
      await Deno.writeTextFile(fail, "#!/bin/sh\necho 'not today' >&2\nexit 3\n", { mode: 0o755 });
      const permissions = [`--allow-run=nsenter,${record},${fail}`];
      const before = await snapshot(netns);

      const locked = await cli(["lock", "--action-script", record, "--netns", netns.name], {
        permissions,
      });
      assert.equal(locked.code, 0, locked.stderr);
      const unlocked = await cli(["unlock", "--action-script", record, "--netns", netns.name], {
        permissions,
      });
      assert.equal(unlocked.code, 0, unlocked.stderr);
      assert.equal(
        await Deno.readTextFile(log),
        `network-lock pid=none netns=${netns.path} jumps=0 0\n` +
          `network-unlock pid=none netns=${netns.path} jumps=2 0\n`,
      );

      const refused = await cli([
        "lock",
        "--action-script",
        record,
        "--action-script",
        fail,
        "--netns",
        netns.name,
      ], { permissions });
      assert.equal(refused.code, 1);
      assert.equal(
        refused.stderr,
        `error: Cannot lock network of namespace ${netns.path}: action script ${fail} (network-lock) failed: ` +
          `${fail} exited with code 3: not today\n`,
      );
      assert.equal(await snapshot(netns), before, "a failing lock script aborts the lock");

      assert.equal((await cli(["lock", "--netns", netns.name])).code, 0);
      const warned = await cli(
        ["unlock", "--action-script", fail, "--json", "--netns", netns.name],
        { permissions },
      );
      assert.equal(warned.code, 0, warned.stderr);
      assert.match(warned.stderr, /^warning: action script .*fail\.sh \(network-unlock\) failed/);
      assert.equal(JSON.parse(warned.stdout).changed, true);
      assert.equal(
        await snapshot(netns),
        before,
        "a failing unlock script does not stop the unlock",
      );

      const noPermission = await cli(["lock", "--action-script", record, "--netns", netns.name]);
      assert.equal(noPermission.code, 2);
      assert.match(
        noPermission.stderr,
        new RegExp(`add --allow-run=${record.replaceAll(".", "\\.")}`),
      );
      assert.equal(await snapshot(netns), before);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  ...integration,
  name: "an action script gets CRTOOLS_INIT_PID for a PID target",
  async fn() {
    await using netns = await createNetns();
    await using tools = await fakeTools({
      "pid.sh": '#!/bin/sh\n[ "$CRTOOLS_INIT_PID" = "$EXPECTED" ]\n',
    });
    const script = `${tools.path.split(":")[0]}/pid.sh`;
    await using sleeper = await startSleeper(netns);
    const result = await cli(["lock", "--action-script", script, String(sleeper.pid)], {
      permissions: [`--allow-run=nsenter,${script}`],
      env: { EXPECTED: String(sleeper.pid) },
    });
    assert.equal(result.code, 0, result.stderr);
    assert.equal((await cli(["unlock", String(sleeper.pid)])).code, 0);
  },
});
