/**
 * The folder tree of lib/ is the architecture (README, Layout): every
 * import goes to the same folder or to a floor below.
 */
import assert from "node:assert/strict";

/** Bottom to top; folders on one floor do not import each other. */
const FLOORS: string[][] = [
  ["common"],
  ["exec"],
  ["netns"],
  ["connections", "nftables"],
  ["iptables"],
  ["shape"],
  ["unlock"],
  ["lock"],
  ["operations.ts"],
  ["criu", "cli"],
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

Deno.test("lib/: every import stays in its folder or goes down a floor", async () => {
  const upward: string[] = [];
  let imports = 0;
  for await (const path of sources(LIB)) {
    const text = await Deno.readTextFile(new URL(path, LIB));
    // Real imports only (doc examples sit in comments, after " * ").
    for (const match of text.matchAll(/^(?:import|export)[^;]*? from "(\.{1,2}\/[^"]+)"/gms)) {
      const target = new URL(match[1], new URL(path, LIB)).pathname.slice(LIB.pathname.length);
      const [from, to] = [path.split("/")[0], target.split("/")[0]];
      imports++;
      if (from !== to && floorOf(from) <= floorOf(to)) upward.push(`${path} -> ${target}`);
    }
  }
  assert.ok(imports > 100, `only ${imports} imports found: the pattern is broken`);
  assert.deepEqual(upward, []);
});
