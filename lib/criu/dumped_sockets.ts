/**
 * The TCP connections a CRIU dump took, read from its images (`files.img`:
 * a `file_entry` per file of the tree, its `inet_sk_entry` for a socket):
 * what a namespace lock narrows to once the tree is gone, read after CRIU
 * is gone instead of from the frozen tree inside CRIU's window. Pure.
 *
 * @module
 */

import type { Connection } from "../connections/proc_net_parser.ts";

/** CRIU's image magics: every image starts with the common one, then its own. */
const IMG_COMMON_MAGIC = 0x54564319;
const FILES_MAGIC = 0x56303138;
/** `fd_types.INETSK`; `file_entry.isk`; TCP; address families; TCP_LISTEN. */
const INETSK = 4;
const IPPROTO_TCP = 6;
const AF_INET = 2;
const AF_INET6 = 10;
const TCP_LISTEN = 10;

/** A protobuf message's fields: varints as numbers, length-delimited as bytes (repeated kept in order). */
function fields(bytes: Uint8Array): Map<number, (number | Uint8Array)[]> {
  const out = new Map<number, (number | Uint8Array)[]>();
  let at = 0;
  const varint = (): number => {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (at >= bytes.length) throw new RangeError("truncated varint");
      const byte = bytes[at++];
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
  };
  while (at < bytes.length) {
    const key = varint();
    const [field, wire] = [Math.floor(key / 8), key % 8];
    let value: number | Uint8Array;
    if (wire === 0) value = varint();
    else if (wire === 2) {
      const length = varint();
      value = bytes.subarray(at, at + length);
      at += length;
    } else if (wire === 5) {
      value = new DataView(bytes.buffer, bytes.byteOffset + at, 4).getUint32(0, true);
      at += 4;
    } else if (wire === 1) {
      at += 8;
      continue;
    } else throw new RangeError(`unknown wire type ${wire}`);
    out.set(field, [...(out.get(field) ?? []), value]);
  }
  return out;
}

/** An address kept by CRIU as uint32 words in network byte order (x86: little-endian words). */
function address(words: number[], family: number): string {
  const bytes = words.flatMap((w) => [w & 0xff, (w >>> 8) & 0xff, (w >>> 16) & 0xff, w >>> 24]);
  if (family === AF_INET) return bytes.slice(0, 4).join(".");
  // IPv4-mapped IPv6 (::ffff:a.b.c.d) is locked as IPv4, as connection mode does.
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return bytes.slice(12, 16).join(".");
  }
  const groups = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  return groups.join(":");
}

/**
 * The TCP connections (every state but LISTEN, with a peer) of a dump's
 * `files.img`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseDumpedConnections } from "./dumped_sockets.ts";
 *
 * // No entry: no connection (the image is just its two magics).
 * const empty = new Uint8Array([0x19, 0x43, 0x56, 0x54, 0x38, 0x31, 0x30, 0x56]);
 * assert.deepEqual(parseDumpedConnections(empty), []);
 * ```
 *
 * @param image The bytes of `files.img`.
 * @returns The connections, local and remote as the tree saw them.
 */
export function parseDumpedConnections(image: Uint8Array): Connection[] {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (
    image.length < 8 || view.getUint32(0, true) !== IMG_COMMON_MAGIC ||
    view.getUint32(4, true) !== FILES_MAGIC
  ) {
    throw new RangeError("not a CRIU files.img");
  }
  const connections: Connection[] = [];
  for (let at = 8; at + 4 <= image.length;) {
    const size = view.getUint32(at, true);
    const entry = fields(image.subarray(at + 4, at + 4 + size));
    at += 4 + size;
    if (entry.get(1)?.[0] !== INETSK) continue;
    const isk = entry.get(4)?.[0];
    if (!(isk instanceof Uint8Array)) continue;
    const sk = fields(isk);
    const num = (field: number) => Number(sk.get(field)?.[0] ?? -1);
    const words = (field: number) => (sk.get(field) ?? []).map(Number);
    const family = num(3);
    if (num(5) !== IPPROTO_TCP || num(6) === TCP_LISTEN || num(8) <= 0) continue;
    if (family !== AF_INET && family !== AF_INET6) continue;
    const local = address(words(11), family);
    const remote = address(words(12), family);
    connections.push({
      family: local.includes(":") ? "ipv6" : "ipv4",
      local,
      localPort: num(7),
      remote,
      remotePort: num(8),
    });
  }
  return connections;
}
