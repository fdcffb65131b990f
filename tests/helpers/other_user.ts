/**
 * Running netlock's CLI as another user (nobody) in a way that does not
 * depend on where the checkout is: a checkout under `/root` (mode 0700) or
 * in a `mktemp -d` folder cannot be read or entered by that user, so the
 * CLI runs from a readable copy, with the working directory set to it.
 */

import { must, type Output, sh } from "./netns.ts";

/** The unprivileged user the tests run as. */
export const NOBODY = "65534";

const ROOT = new URL("../../", import.meta.url).pathname;

/** A copy of the CLI that another user can read and run. */
export interface ReadableCopy extends AsyncDisposable {
  /** The copy's directory: readable by everyone, the user's working directory. */
  dir: string;
  /**
   * Runs `deno run --no-config PERMISSIONS cli.ts ARGS` as nobody from the
   * copy. `cwd` replaces the working directory (default: the copy).
   */
  cli(args: string[], options?: { permissions?: string[]; cwd?: string }): Promise<Output>;
}

/**
 * Copies `cli.ts`, `lib/`, `dist/` and `deno.json` to a new temporary directory that
 * nobody can read, with a Deno cache nobody can write.
 */
export async function readableCopy(): Promise<ReadableCopy> {
  const dir = await Deno.makeTempDir({ prefix: "netlock-copy-" });
  await must(["cp", "-r", `${ROOT}cli.ts`, `${ROOT}lib`, `${ROOT}dist`, `${ROOT}deno.json`, dir]);
  await Deno.mkdir(`${dir}/deno-dir`);
  await must(["chmod", "-R", "a+rX", dir]);
  await must(["chown", `${NOBODY}:${NOBODY}`, `${dir}/deno-dir`]);
  return {
    dir,
    cli: (args, options = {}) =>
      sh([
        // Root enters the directory, then drops to nobody: the user may not
        // be able to enter it itself (that is one of the cases tested).
        "env",
        "-C",
        options.cwd ?? dir,
        "setpriv",
        `--reuid=${NOBODY}`,
        `--regid=${NOBODY}`,
        "--clear-groups",
        "env",
        `DENO_DIR=${dir}/deno-dir`,
        `HOME=${dir}/deno-dir`,
        "NO_COLOR=1",
        Deno.execPath(),
        "run",
        "--no-config",
        ...(options.permissions ?? ["--allow-run=nsenter"]),
        `${dir}/cli.ts`,
        ...args,
      ]),
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}
