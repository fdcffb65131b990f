/**
 * `cli.ts` runs `dist/cli.js`, the bundle of `lib/cli/main.ts`: a test run
 * (`deno test` alone, without `deno task test`, which bundles first) fails
 * when the bundle is not the source's, instead of testing stale code.
 */
import assert from "node:assert/strict";

Deno.test("dist/cli.js is what lib/cli/main.ts bundles to (else: deno task bundle)", async () => {
  const check = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      new URL("../scripts/bundle.ts", import.meta.url).pathname,
      "--check",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(check.code, 0, new TextDecoder().decode(check.stderr));
});
