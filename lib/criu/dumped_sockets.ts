/**
 * The TCP connections and listeners a CRIU dump took, read from its images
 * (`files.img`: a `file_entry` per file of the tree, its `inet_sk_entry`
 * for a socket): what stays locked after a final dump (a host tree's lock
 * completed at post-dump, a namespace lock narrowed after a failed
 * restore), read from the images instead of from the frozen tree. Pure.
 *
 * @module
 */

import type { Connection, Listener } from "../connections/proc_net_parser.ts";

/** What a dump took: its TCP connections and its TCP listeners. */
export interface DumpedSockets {
  /** Every TCP socket with a peer (any state but LISTEN). */
  connections: Connection[];
  /** Every listening TCP socket. */
  listeners: Listener[];
}

/** CRIU's image magics: every image starts with the common one, then its own. */
const IMG_COMMON_MAGIC = 0x54564319;
const FILES_MAGIC = 0x56303138;
const PSTREE_MAGIC = 0x50273030;
const NETNS_MAGIC = 0x55933752;
/** The key of `netns_entry.ext_key` (a namespace CRIU was told is external). */
const EXT_KEY = 8 * 8 + 2;
/** The key of `pstree_entry.pid`. */
const PID_KEY = 1 * 8 + 0;
/** `fd_types.INETSK`; `file_entry.isk`; TCP; address families; TCP_LISTEN. */
const INETSK = 4;
const IPPROTO_TCP = 6;
const AF_INET = 2;
const AF_INET6 = 10;
const TCP_LISTEN = 10;
/** The keys (field number × 8 + wire type) of `file_entry.type` and `file_entry.isk`. */
const TYPE_KEY = 1 * 8 + 0;
const SOCKET_KEY = 4 * 8 + 2;

/*
 * A protobuf reader just big enough for two messages, fields read in place:
 * a dump of 10,000 connections is read inside CRIU's frozen window, where
 * the code runs cold (a map per message took 45-55 ms there; this 15-20,
 * 5-8 once warm).
 */

/** Where the last varint read ended (a second return value, without an allocation). */
let after = 0;

/** The varint at `at` (up to 2^53, enough for every field read here); sets `after`. */
function varint(bytes: Uint8Array, at: number, end: number): number {
  let value = 0;
  let scale = 1;
  while (at < end) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) {
      after = at;
      return value;
    }
    scale *= 128;
  }
  throw new RangeError("truncated varint");
}

/** Where a value of wire type `wire` that starts at `at` ends. */
function skip(bytes: Uint8Array, at: number, end: number, wire: number): number {
  let next: number;
  if (wire === 0) next = (varint(bytes, at, end), after);
  else if (wire === 2) next = varint(bytes, at, end) + after;
  else if (wire === 1) next = at + 8;
  else if (wire === 5) next = at + 4;
  else throw new RangeError(`unknown wire type ${wire}`);
  if (next > end) throw new RangeError("truncated field");
  return next;
}

/** An address kept by CRIU as uint32 words in network byte order (x86: little-endian words). */
function address(words: number[], family: number): string {
  const dotted = (w: number) => `${w & 0xff}.${(w >>> 8) & 0xff}.${(w >>> 16) & 0xff}.${w >>> 24}`;
  if (family === AF_INET) return dotted(words[0] ?? 0);
  // IPv4-mapped IPv6 (::ffff:a.b.c.d) is locked as IPv4, as connection mode does.
  if (!words[0] && !words[1] && words[2] === 0xffff0000) return dotted(words[3] ?? 0);
  const groups = [];
  for (let i = 0; i < 4; i++) {
    const w = words[i] ?? 0;
    groups.push((((w & 0xff) << 8) | ((w >>> 8) & 0xff)).toString(16));
    groups.push(((((w >>> 16) & 0xff) << 8) | (w >>> 24)).toString(16));
  }
  return groups.join(":");
}

/** inet_sk_entry (bytes `at` to `end`): a TCP connection or listener, added to `into`. */
function inetSocket(bytes: Uint8Array, at: number, end: number, into: DumpedSockets): void {
  let family = -1, proto = -1, state = -1, localPort = -1, remotePort = -1;
  const src: number[] = [];
  const dst: number[] = [];
  while (at < end) {
    const key = varint(bytes, at, end);
    if (key % 8 !== 0) {
      at = skip(bytes, after, end, key % 8);
      continue;
    }
    const value = varint(bytes, after, end);
    at = after;
    const field = Math.floor(key / 8);
    if (field === 3) family = value;
    else if (field === 5) proto = value;
    else if (field === 6) state = value;
    else if (field === 7) localPort = value;
    else if (field === 8) remotePort = value;
    else if (field === 11) src.push(value);
    else if (field === 12) dst.push(value);
  }
  if (proto !== IPPROTO_TCP || (family !== AF_INET && family !== AF_INET6)) return;
  const local = address(src, family);
  const of = (text: string) => text.includes(":") ? "ipv6" as const : "ipv4" as const;
  if (state === TCP_LISTEN) {
    if (localPort > 0) into.listeners.push({ family: of(local), local, localPort });
    return;
  }
  if (remotePort <= 0) return;
  const remote = address(dst, family);
  into.connections.push({ family: of(local), local, localPort, remote, remotePort });
}

/**
 * The TCP connections (every state but LISTEN, with a peer) and the TCP
 * listeners of a dump's `files.img`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseDumpedSockets } from "./dumped_sockets.ts";
 *
 * // No entry: nothing taken (the image is just its two magics).
 * const empty = new Uint8Array([0x19, 0x43, 0x56, 0x54, 0x38, 0x31, 0x30, 0x56]);
 * assert.deepEqual(parseDumpedSockets(empty), { connections: [], listeners: [] });
 * ```
 *
 * @param image The bytes of `files.img`.
 * @returns The connections and listeners, addresses as the tree saw them.
 */
export function parseDumpedSockets(image: Uint8Array): DumpedSockets {
  const view = imageView(image, FILES_MAGIC, "files.img");
  const taken: DumpedSockets = { connections: [], listeners: [] };
  for (let at = 8; at + 4 <= image.length;) {
    const end = at + 4 + view.getUint32(at, true);
    if (end > image.length) throw new RangeError("truncated entry");
    // file_entry: its type (field 1) and, for an inet socket, the socket (field 4).
    let type = -1;
    let socket = -1;
    let socketEnd = -1;
    for (let field = at + 4; field < end;) {
      const key = varint(image, field, end);
      if (key === TYPE_KEY) {
        type = varint(image, after, end);
        if (type !== INETSK) break; // not an inet socket: the rest is not read
        field = after;
      } else if (key === SOCKET_KEY) {
        const length = varint(image, after, end);
        socket = after;
        socketEnd = field = socket + length;
        if (socketEnd > end) throw new RangeError("truncated field");
      } else field = skip(image, after, end, key % 8);
    }
    at = end;
    if (type === INETSK && socket >= 0) inetSocket(image, socket, socketEnd, taken);
  }
  return taken;
}

/**
 * The TCP connections (every state but LISTEN, with a peer) of a dump's
 * `files.img` (see {@linkcode parseDumpedSockets}, which also reads its
 * listeners).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseDumpedConnections } from "./dumped_sockets.ts";
 *
 * const empty = new Uint8Array([0x19, 0x43, 0x56, 0x54, 0x38, 0x31, 0x30, 0x56]);
 * assert.deepEqual(parseDumpedConnections(empty), []);
 * ```
 *
 * @param image The bytes of `files.img`.
 * @returns The connections, local and remote as the tree saw them.
 */
export function parseDumpedConnections(image: Uint8Array): Connection[] {
  return parseDumpedSockets(image).connections;
}

/**
 * The dumped tree's root: the PID of the first entry of a dump's
 * `pstree.img` (as the tree's PID namespace numbered it; for a tree in
 * CRIU's own PID namespace, the PID `CRTOOLS_INIT_PID` had at the dump).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseDumpedRoot } from "./dumped_sockets.ts";
 *
 * // The two magics, then one entry of 8 bytes: pid 4242, ppid 1, pgid 4242, sid 4242.
 * const image = new Uint8Array([
 *   0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50,
 *   8, 0, 0, 0, 0x08, 0x92, 0x21, 0x10, 0x01, 0x18, 0x92, 0x21,
 * ]);
 * assert.equal(parseDumpedRoot(image), 4242);
 * ```
 *
 * @param image The bytes of `pstree.img`.
 * @returns The root's PID.
 */
export function parseDumpedRoot(image: Uint8Array): number {
  const view = imageView(image, PSTREE_MAGIC, "pstree.img");
  if (image.length < 12) throw new RangeError("pstree.img holds no process");
  const end = 12 + view.getUint32(8, true);
  if (end > image.length) throw new RangeError("truncated entry");
  for (let field = 12; field < end;) {
    const key = varint(image, field, end);
    if (key === PID_KEY) {
      const pid = varint(image, after, end);
      if (pid > 0) return pid;
      break;
    }
    field = skip(image, after, end, key % 8);
  }
  throw new RangeError("pstree.img's first process has no PID");
}

/**
 * Whether a `netns-ID.img` names a network namespace the dump did not take
 * but was told is external (`--external net[INODE]:KEY`, a pod's): CRIU
 * writes only its key (`netns_entry.ext_key`) and the restore joins the
 * namespace that is still there, which thus outlives the dump.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isExternalNetns } from "./dumped_sockets.ts";
 *
 * // The two magics, then one entry of 5 bytes: ext_key "pod".
 * const image = new Uint8Array([
 *   0x19, 0x43, 0x56, 0x54, 0x52, 0x37, 0x93, 0x55,
 *   5, 0, 0, 0, 0x42, 3, 0x70, 0x6f, 0x64,
 * ]);
 * assert.equal(isExternalNetns(image), true);
 * // A namespace the dump took: its settings, no key.
 * assert.equal(isExternalNetns(new Uint8Array([...image.subarray(0, 8), 2, 0, 0, 0, 0x08, 1])), false);
 * ```
 *
 * @param image The bytes of a `netns-ID.img`.
 * @returns `true` when its entry holds an external key.
 */
export function isExternalNetns(image: Uint8Array): boolean {
  const view = imageView(image, NETNS_MAGIC, "netns image");
  if (image.length < 12) return false;
  const end = 12 + view.getUint32(8, true);
  if (end > image.length) throw new RangeError("truncated entry");
  for (let field = 12; field < end;) {
    const key = varint(image, field, end);
    if (key === EXT_KEY) return true;
    field = skip(image, after, end, key % 8);
  }
  return false;
}

/** A view of an image whose magics are checked. */
function imageView(image: Uint8Array, magic: number, name: string): DataView {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (
    image.length < 8 || view.getUint32(0, true) !== IMG_COMMON_MAGIC ||
    view.getUint32(4, true) !== magic
  ) {
    throw new RangeError(`not a CRIU ${name}`);
  }
  return view;
}
