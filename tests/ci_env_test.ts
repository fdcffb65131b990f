/** What the test helpers take for "this is CI", where no integration test may skip. */
import assert from "node:assert/strict";
import { ciIsSet } from "./helpers/netns.ts";

Deno.test("CI is any value of CI but empty, 0, false or no", () => {
  for (const value of ["true", "1", "yes", "TRUE", "buildkite"]) assert.equal(ciIsSet(value), true);
  for (const value of [undefined, "", "0", "false", "no", "False"]) {
    assert.equal(ciIsSet(value), false);
  }
});
