/**
 * The tests that run netlock as another user pass whatever the checkout's
 * location and mode: the unprivileged flows run here from a copy of the
 * project placed in a 0700 directory, as a clone under /root would be.
 */
import assert from "node:assert/strict";
import { integration, must, sh } from "./helpers/netns.ts";

const ROOT = new URL("../", import.meta.url).pathname;

Deno.test({
  ...integration,
  name: "the unprivileged flows pass from a checkout in a 0700 directory",
  async fn() {
    const privateDir = await Deno.makeTempDir({ prefix: "netlock-private-" });
    try {
      await Deno.chmod(privateDir, 0o700);
      const checkout = `${privateDir}/netlock`;
      await Deno.mkdir(checkout);
      for (const entry of ["cli.ts", "mod.ts", "deno.json", "dist", "lib", "tests", "scripts"]) {
        await must(["cp", "-r", `${ROOT}${entry}`, checkout]);
      }
      // Only the tests that run as nobody; this file is not among them.
      const result = await sh([
        "env",
        "-C",
        checkout,
        Deno.execPath(),
        "test",
        "--allow-all",
        "--filter",
        "unprivileged user",
        "tests/integration_hostile_test.ts",
        "tests/integration_userns_test.ts",
      ], { NO_COLOR: "1" });
      assert.equal(result.code, 0, result.stdout + result.stderr);
      assert.match(result.stdout, /^ok \| 3 passed \| 0 failed/m, result.stdout);
    } finally {
      await Deno.remove(privateDir, { recursive: true });
    }
  },
});
