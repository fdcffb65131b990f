/**
 * What the CLI prints, and how: exit codes, one-line errors and warnings on
 * stderr (colour only on a terminal, never with NO_COLOR), writes that a
 * closed pipe does not break, and environment reads that never make Deno
 * prompt. Small on purpose: every command loads it.
 *
 * @module
 */

/** Exit codes of the CLI. */
export const EXIT = { ok: 0, failed: 1, usage: 2, notLocked: 3 } as const;

/** Prints `error: MESSAGE` on stderr. */
export function printError(message: string): void {
  const colour = Deno.stderr.isTerminal() && !Deno.noColor;
  writeSync(Deno.stderr, `${colour ? "\x1b[31merror\x1b[0m" : "error"}: ${message}\n`);
}

/** Prints `warning: MESSAGE` on stderr. */
export function printWarning(message: string): void {
  const colour = Deno.stderr.isTerminal() && !Deno.noColor;
  writeSync(Deno.stderr, `${colour ? "\x1b[33mwarning\x1b[0m" : "warning"}: ${message}\n`);
}

/** Writes all of `text` (a closed pipe is not netlock's failure). */
export async function write(stream: typeof Deno.stdout, text: string): Promise<void> {
  try {
    const bytes = new TextEncoder().encode(text);
    let written = 0;
    while (written < bytes.length) written += await stream.write(bytes.subarray(written));
  } catch {
    // A closed pipe (`netlock status | head -1`) is not netlock's failure.
  }
}

/** Writes all of `text` at once (see {@linkcode write}). */
export function writeSync(stream: typeof Deno.stdout, text: string): void {
  try {
    const bytes = new TextEncoder().encode(text);
    let written = 0;
    while (written < bytes.length) written += stream.writeSync(bytes.subarray(written));
  } catch {
    // See write().
  }
}

/** Reads an environment variable, only if granted: never makes Deno prompt. */
export function readEnv(name: string): string | undefined {
  // Only read what was granted: never make Deno prompt.
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return undefined;
  }
  return Deno.env.get(name);
}
