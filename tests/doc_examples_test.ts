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

Deno.test("every doc example is checked (lib, mod.ts, the README, docs): none is `ts ignore`; mod.ts's assert what they show or need root", async () => {
  const files = [
    "mod.ts",
    "cli.ts",
    ...(await Array.fromAsync(sources(new URL("lib/", ROOT), "lib/"))),
  ];
  const ignored: string[] = [];
  for (const file of files) {
    const text = await Deno.readTextFile(new URL(file, ROOT));
    for (const [i, line] of text.split("\n").entries()) {
      if (/^\s*\*\s*```ts\s+ignore/.test(line)) ignored.push(`${file}:${i + 1}`);
    }
  }
  // The README's and docs' TypeScript blocks too (markdown: no leading `*`).
  const pages = [
    "README.md",
    ...[...Deno.readDirSync(new URL("docs/", ROOT))].map((e) => `docs/${e.name}`),
  ];
  for (const page of pages) {
    const text = await Deno.readTextFile(new URL(page, ROOT));
    for (const [i, line] of text.split("\n").entries()) {
      if (/^```(ts|typescript)\s+ignore/.test(line)) ignored.push(`${page}:${i + 1}`);
    }
  }
  assert.deepEqual(ignored, [], "an example that needs root is a function: type-checked, not run");
  // `deno task test` runs the README's blocks (deno test --doc README.md).
  const tasks = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT))).tasks;
  assert.match(tasks.test.command, /deno test .*--doc .*README\.md/);
  const readme = await Deno.readTextFile(new URL("README.md", ROOT));
  assert.ok(/```ts\n/.test(readme), "the README's library example is a checked block");
  const mod = await Deno.readTextFile(new URL("mod.ts", ROOT));
  const examples = [...mod.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]);
  assert.ok(examples.length >= 5);
  for (const example of examples) {
    assert.ok(
      /assert/.test(example) || /export async function example\(\)/.test(example),
      `an example of mod.ts neither asserts nor is type-checked only:\n${example}`,
    );
  }
});
