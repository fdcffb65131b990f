/**
 * What the dump's helper reads of CRIU's images to tell whether a held
 * namespace lock outlives the tree (lib/criu/helper/dump_session.ts,
 * lib/criu/dumped_sockets.ts): images written here byte by byte.
 */
import assert from "node:assert/strict";
import { namespaceOutlives } from "../lib/criu/helper/dump_session.ts";
import { isExternalNetns } from "../lib/criu/dumped_sockets.ts";

/** A `netns-ID.img`: the two magics, then one entry of `entry`'s bytes. */
function netnsImage(entry: number[]): Uint8Array {
  return new Uint8Array([
    0x19,
    0x43,
    0x56,
    0x54,
    0x52,
    0x37,
    0x93,
    0x55,
    entry.length,
    0,
    0,
    0,
    ...entry,
  ]);
}

// ext_key (field 8, a string) "pod"; a namespace CRIU took: def_conf (1) and nsids (7) entries.
const EXTERNAL = netnsImage([0x42, 3, 0x70, 0x6f, 0x64]);
const TAKEN = netnsImage([0x08, 1, 0x08, 0, 0x3a, 2, 0x08, 1]);

Deno.test("isExternalNetns() tells an external namespace's key from a namespace the dump took", () => {
  assert.equal(isExternalNetns(EXTERNAL), true);
  assert.equal(isExternalNetns(TAKEN), false);
  // The key after other fields is found; another image is refused.
  assert.equal(isExternalNetns(netnsImage([0x08, 1, 0x42, 1, 0x78])), true);
  assert.throws(() => isExternalNetns(new Uint8Array(12)), /not a CRIU netns image/);
});

Deno.test("namespaceOutlives() only when every network namespace of the dump is external", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const lines: string[] = [];
    const log = (line: string) => lines.push(line);
    // No namespace image at all: nothing tells it outlives.
    assert.equal(await namespaceOutlives(dir, log), false);
    await Deno.writeFile(`${dir}/netns-10.img`, EXTERNAL);
    assert.equal(await namespaceOutlives(dir, log), true);
    // A second namespace that the dump took (a tree with a namespace inside): no.
    await Deno.writeFile(`${dir}/netns-11.img`, TAKEN);
    assert.equal(await namespaceOutlives(dir, log), false);
    await Deno.remove(`${dir}/netns-11.img`);
    // An image it cannot read: no, and the log says why.
    await Deno.writeFile(`${dir}/netns-12.img`, new Uint8Array([1, 2, 3]));
    assert.equal(await namespaceOutlives(dir, log), false);
    assert.match(lines.join("\n"), /not read from CRIU's images/);
    assert.equal(await namespaceOutlives(`${dir}/missing`, log), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
