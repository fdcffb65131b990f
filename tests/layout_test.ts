/**
 * The folder tree of lib/ is the architecture (README, Layout): every
 * import goes to the same folder or to a floor below.
 */
import assert from "node:assert/strict";

/** Bottom to top; folders on one floor do not import each other. */
const FLOORS: string[][] = [
  ["common"],
  ["exec", "hold"],
  ["netns"],
  ["connections", "nftables"],
  ["iptables"],
  ["shape"],
  ["unlock"],
  ["lock"],
  ["operations.ts"],
  ["criu"],
  // The CLI routes to the CRIU hook's entry points.
  ["cli"],
];
const LIB = new URL("../lib/", import.meta.url);

function floorOf(top: string): number {
  const floor = FLOORS.findIndex((names) => names.includes(top));
  assert.notEqual(floor, -1, `lib/${top} is on no floor of this test (nor in the README)`);
  return floor;
}

async function* sources(dir: URL, prefix = ""): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${prefix}${entry.name}`;
    if (entry.isDirectory) yield* sources(new URL(`${entry.name}/`, dir), `${path}/`);
    else if (entry.name.endsWith(".ts")) yield path;
  }
}

/**
 * A file's relative imports: static ones (`import`/`export ... from`), and
 * dynamic ones (`await import("...")`) outside comments (doc examples sit
 * in comments, after " * ").
 */
export function relativeImports(text: string): { specifier: string; dynamic: boolean }[] {
  const statics = [...text.matchAll(/^(?:import|export)[^;]*? from "(\.{1,2}\/[^"]+)"/gms)]
    .map((match) => ({ specifier: match[1], dynamic: false }));
  const dynamics = text.split("\n").filter((line) => !/^\s*(\*|\/\/)/.test(line))
    .flatMap((line) => [...line.matchAll(/\bimport\("(\.{1,2}\/[^"]+)"\)/g)])
    .map((match) => ({ specifier: match[1], dynamic: true }));
  return [...statics, ...dynamics];
}

Deno.test("lib/: every import, dynamic ones included, stays in its folder or goes down a floor", async () => {
  const upward: string[] = [];
  let imports = 0;
  for await (const path of sources(LIB)) {
    const text = await Deno.readTextFile(new URL(path, LIB));
    for (const found of relativeImports(text)) {
      const target = new URL(found.specifier, new URL(path, LIB)).pathname
        .slice(LIB.pathname.length);
      const [from, to] = [path.split("/")[0], target.split("/")[0]];
      imports++;
      if (from !== to && floorOf(from) <= floorOf(to)) upward.push(`${path} -> ${target}`);
    }
  }
  assert.ok(imports > 100, `only ${imports} imports found: the pattern is broken`);
  assert.deepEqual(upward, []);
});

// The CLI runs from one bundled file (dist/cli.js), where a dynamic import
// loads nothing later: it only wraps what it reaches in functions that V8
// compiles on their first call, in every cold run (docs/benchmarks.md).
Deno.test("lib/: no dynamic import", async () => {
  const dynamic: string[] = [];
  for await (const path of sources(LIB)) {
    const text = await Deno.readTextFile(new URL(path, LIB));
    for (const found of relativeImports(text)) {
      if (found.dynamic) dynamic.push(`${path} -> ${found.specifier}`);
    }
  }
  assert.deepEqual(dynamic, []);
});

Deno.test("relativeImports() reads dynamic imports, not those in comments", () => {
  const text = 'import { a } from "../common/a.ts";\n' +
    ' * const { b } = await import("../cli/b.ts");\n' +
    '  const { c } = await import("../criu/c.ts");\n';
  assert.deepEqual(relativeImports(text), [
    { specifier: "../common/a.ts", dynamic: false },
    { specifier: "../criu/c.ts", dynamic: true },
  ]);
});
