#!/usr/bin/env -S deno run --allow-run=nsenter --allow-env=PATH,CRTOOLS_SCRIPT_ACTION,CRTOOLS_INIT_PID,NETLOCK_BACKEND,NETLOCK_NAME,NETLOCK_MARK
/**
 * The netlock command line: parses flags, calls the library, prints.
 *
 * ```sh
 * deno run --allow-run=nsenter cli.ts lock 1234
 * ```
 *
 * Run with no arguments while `CRTOOLS_SCRIPT_ACTION` is set, it is CRIU's
 * action script (`criu dump --network-lock skip --action-script cli.ts`).
 *
 * The code is `lib/cli/main.ts` and what it imports, run from its bundle
 * `dist/cli.js` (`deno task bundle`; `deno task check` fails when the
 * bundle is stale): one module starts faster than eighty.
 *
 * @module
 */

// @ts-types="./lib/cli/main.ts"
import { main } from "./dist/cli.js";

export { main };

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
