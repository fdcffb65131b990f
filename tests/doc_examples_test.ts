/**
 * Doc examples run as tests (`deno test --doc`): each must be able to fail.
 * `console.assert` only prints, so an example checks with node:assert.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);

async function* sources(dir: URL, prefix = ""): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${prefix}${entry.name}`;
    if (entry.isDirectory) yield* sources(new URL(`${entry.name}/`, dir), `${path}/`);
    else if (path.endsWith(".ts")) yield path;
  }
}

Deno.test("no doc example asserts with console.assert (it prints and passes)", async () => {
  const offenders: string[] = [];
  const files = [
    "mod.ts",
    "cli.ts",
    ...(await Array.fromAsync(sources(new URL("lib/", ROOT), "lib/"))),
  ];
  for (const file of files) {
    const text = await Deno.readTextFile(new URL(file, ROOT));
    for (const [i, line] of text.split("\n").entries()) {
      if (/^\s*\*.*console\.assert\(/.test(line)) offenders.push(`${file}:${i + 1}`);
    }
  }
  assert.deepEqual(offenders, []);
});
