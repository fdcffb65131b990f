/**
 * What the CRIU benchmarks share: the CRIU to measure with, and CRIU's own
 * figures read from its stats images (`frozen_time`, `restore_time`).
 *
 * @module
 */

/** The CRIU to measure with, or why there is none. */
export async function findCriu(): Promise<{ bin: string } | { missing: string }> {
  const bin = Deno.env.get("CRIU_BIN") ?? "criu";
  try {
    const check = await new Deno.Command(bin, { args: ["check"], stdout: "null", stderr: "piped" })
      .output();
    if (check.success) return { bin };
    const why = new TextDecoder().decode(check.stderr).trim().split("\n").at(-1);
    return { missing: `${bin} check failed: ${why}` };
  } catch {
    return { missing: `no CRIU: set CRIU_BIN or put criu on PATH (tried ${bin})` };
  }
}

/**
 * CRIU's own figures of a dump or a restore, in ms: `frozen_time` of the
 * `stats-dump` image, `restore_time` of `stats-restore`.
 */
export async function criuStat(images: string, which: "dump" | "restore"): Promise<number> {
  const image = await Deno.readFile(`${images}/stats-${which}`);
  return (which === "dump" ? readStat(image, 1, 2) : readStat(image, 2, 4)) / 1000;
}

/** Reads one varint field of a message nested in CRIU's stats image. */
function readStat(image: Uint8Array, outer: number, inner: number): number {
  // Two magic numbers, then a 4-byte little-endian size, then stats_entry.
  const size = new DataView(image.buffer, image.byteOffset + 8, 4).getUint32(0, true);
  const entry = fields(image.subarray(12, 12 + size)).get(outer) as Uint8Array;
  return fields(entry).get(inner) as number;
}

function fields(bytes: Uint8Array): Map<number, number | Uint8Array> {
  const out = new Map<number, number | Uint8Array>();
  let i = 0;
  const varint = () => {
    let value = 0;
    let scale = 1;
    for (;;) {
      const byte = bytes[i++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
      if (byte < 0x80) return value;
    }
  };
  while (i < bytes.length) {
    const key = varint();
    if ((key & 7) === 0) out.set(key >> 3, varint());
    else if ((key & 7) === 2) {
      const length = varint();
      out.set(key >> 3, bytes.subarray(i, i + length));
      i += length;
    } else throw new Error(`unexpected protobuf wire type ${key & 7}`);
  }
  return out;
}

/** A tmpfs the benchmark mounts for CRIU's images, removed on dispose. */
export interface ImagesTmpfs extends AsyncDisposable {
  /** Where it is mounted. */
  path: string;
}

/**
 * Mounts a tmpfs of its own for CRIU's images (as a migration would keep
 * them in memory): on a disk, a dump of 10,000 connections creates 10,000
 * `tcp-stream-*.img` files, and ext4 slows each new inode down while the
 * previous round's deleted ones are "recent" (CRIU's dump of 10,000
 * connections took 1.1 s or 4.7 s by the round here, `perf`: ext4's
 * recently_deleted). Not /dev/shm: Deno asks for --allow-all under /dev
 * (denoland/deno#30979), which the hook's helper is not given.
 */
export async function imagesTmpfs(): Promise<ImagesTmpfs> {
  const path = await Deno.makeTempDir({ prefix: "netlock-bench-images-" });
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "mode=0700", "netlock-bench", path],
    stderr: "piped",
  }).output();
  if (!mount.success) {
    await Deno.remove(path);
    throw new Error(`cannot mount a tmpfs: ${new TextDecoder().decode(mount.stderr).trim()}`);
  }
  return {
    path,
    async [Symbol.asyncDispose]() {
      // A hook's helper may hold a CRIU log there for a moment after CRIU:
      // the mount is busy until it ends (10 s at most).
      for (let i = 0; i < 100; i++) {
        if ((await new Deno.Command("umount", { args: [path] }).output()).success) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await Deno.remove(path);
    },
  };
}
