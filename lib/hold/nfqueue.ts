/**
 * Pure encoders and a decoder of the nfnetlink_queue messages a holder
 * exchanges with the kernel (linux/netfilter/nfnetlink_queue.h): bind a
 * queue number with metadata-only copies and a bounded length, unbind it,
 * and accept every held packet up to an id at once (a batch verdict); the
 * kernel's packets and acknowledgements, decoded to what a holder needs.
 *
 * @module
 */

/** nfnetlink's subsystem of the queue (NFNL_SUBSYS_QUEUE). */
const SUBSYS_QUEUE = 3;
/** The queue's messages (enum nfqnl_msg_types). */
const MSG_PACKET = 0;
const MSG_CONFIG = 2;
const MSG_VERDICT_BATCH = 3;
/** Netlink's own messages and flags. */
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 1;
const NLM_F_ACK = 4;
/** Attributes (enum nfqnl_attr_config, enum nfqnl_attr_type). */
const CFG_CMD = 1;
const CFG_PARAMS = 2;
const CFG_QUEUE_MAXLEN = 3;
const ATTR_PACKET_HDR = 1;
const ATTR_VERDICT_HDR = 2;
/** Commands and the copy mode that keeps the packet in the kernel. */
const CMD_BIND = 1;
const CMD_UNBIND = 2;
const COPY_META = 1;
/** The verdict that lets a held packet go on. */
const NF_ACCEPT = 1;

/** What one message from the kernel says. */
export type QueueMessage =
  /** A packet held: its id in the queue (ids grow by one from 1). */
  | { kind: "packet"; id: number }
  /** The answer to a request with `seq`: `errno` 0 is success. */
  | { kind: "ack"; seq: number; errno: number }
  | { kind: "other" };

/**
 * A request binding queue `queue` (in the socket's network namespace):
 * bind, copy metadata only (the packet stays in the kernel), at most
 * `maxLen` packets held (the kernel drops the rest: no fail-open flag).
 * Acknowledged: a queue another socket holds answers `EBUSY`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeBind } from "./nfqueue.ts";
 *
 * const bytes = encodeBind(7, 4096, 1);
 * assert.equal(new DataView(bytes.buffer).getUint32(0, true), bytes.length);
 * assert.equal(new DataView(bytes.buffer).getUint16(4, true), 0x0302); // queue, config
 * assert.equal(new DataView(bytes.buffer).getUint16(18, false), 7); // the queue number
 * ```
 *
 * @param queue The queue number (0-65535).
 * @param maxLen The most packets held.
 * @param seq The request's sequence number.
 * @returns The netlink message.
 */
export function encodeBind(queue: number, maxLen: number, seq: number): Uint8Array {
  const cmd = new Uint8Array(4);
  cmd[0] = CMD_BIND;
  const params = new Uint8Array(5);
  new DataView(params.buffer).setUint32(0, 0xffff, false);
  params[4] = COPY_META;
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, maxLen, false);
  return message(MSG_CONFIG, queue, seq, [
    [CFG_CMD, cmd],
    [CFG_PARAMS, params],
    [CFG_QUEUE_MAXLEN, len],
  ]);
}

/**
 * A request unbinding queue `queue` (the packets it still holds are
 * dropped by the kernel). Acknowledged.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeUnbind } from "./nfqueue.ts";
 *
 * assert.equal(encodeUnbind(7, 2)[24], 2); // NFQNL_CFG_CMD_UNBIND
 * ```
 *
 * @param queue The queue number.
 * @param seq The request's sequence number.
 * @returns The netlink message.
 */
export function encodeUnbind(queue: number, seq: number): Uint8Array {
  const cmd = new Uint8Array(4);
  cmd[0] = CMD_UNBIND;
  return message(MSG_CONFIG, queue, seq, [[CFG_CMD, cmd]]);
}

/**
 * A batch verdict: every packet of queue `queue` with an id up to `id`
 * accepted at once. Acknowledged, unless `ack` is false (the kernel then
 * answers an error only).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeAcceptUpTo } from "./nfqueue.ts";
 *
 * const view = new DataView(encodeAcceptUpTo(7, 42, 3).buffer);
 * assert.equal(view.getUint16(4, true), 0x0303); // queue, batch verdict
 * assert.equal(view.getUint32(24, false), 1); // NF_ACCEPT
 * assert.equal(view.getUint32(28, false), 42);
 * ```
 *
 * @param queue The queue number.
 * @param id The highest packet id accepted.
 * @param seq The request's sequence number.
 * @param ack Whether the kernel acknowledges it.
 * @returns The netlink message.
 */
export function encodeAcceptUpTo(
  queue: number,
  id: number,
  seq: number,
  ack = true,
): Uint8Array {
  const verdict = new Uint8Array(8);
  const view = new DataView(verdict.buffer);
  view.setUint32(0, NF_ACCEPT, false);
  view.setUint32(4, id >>> 0, false);
  return message(MSG_VERDICT_BATCH, queue, seq, [[ATTR_VERDICT_HDR, verdict]], ack);
}

/** What the kernel tells of one queue in `/proc/net/netfilter/nfnetlink_queue`. */
export interface QueueStats {
  /** How many packets it holds now. */
  held: number;
  /** The id it gave the last packet it queued (ids count up from 1 on the binding). */
  lastId: number;
  /** How many packets given an id it dropped because its holder's socket was full. */
  userDropped: number;
}

/**
 * Reads queue `queue`'s line of `/proc/net/netfilter/nfnetlink_queue`
 * (the queue, the holder's port id, the packets held, the copy mode and
 * range, the packets dropped by the kernel and by user space, the last id,
 * 1); `undefined` when the queue is not there or the line is not of that
 * shape.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseQueueStats } from "./nfqueue.ts";
 *
 * const text = "49428  18485  2644 1     0     0     0     2644  1\n";
 * assert.deepEqual(parseQueueStats(text, 49428), { held: 2644, lastId: 2644, userDropped: 0 });
 * assert.equal(parseQueueStats(text, 7), undefined);
 * ```
 *
 * @param text The file's text.
 * @param queue The queue number.
 * @returns How many packets it holds and the last id it gave.
 */
export function parseQueueStats(text: string, queue: number): QueueStats | undefined {
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 8 || !fields.every((field) => /^[0-9]+$/.test(field))) continue;
    if (Number(fields[0]) === queue) {
      return { held: Number(fields[2]), lastId: Number(fields[7]), userDropped: Number(fields[6]) };
    }
  }
  return undefined;
}

/**
 * The messages in what one `recv` returned: held packets (their ids) and
 * acknowledgements (`errno` 0, or the error's number).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decodeMessages, encodeBind } from "./nfqueue.ts";
 *
 * // An acknowledgement: NLMSG_ERROR, error 0, then the request's header.
 * const ack = new Uint8Array(36);
 * const view = new DataView(ack.buffer);
 * view.setUint32(0, 36, true);
 * view.setUint16(4, 2, true);
 * view.setUint32(8, 5, true);
 * ack.set(encodeBind(1, 1, 5).subarray(0, 16), 20);
 * assert.deepEqual(decodeMessages(ack), [{ kind: "ack", seq: 5, errno: 0 }]);
 * ```
 *
 * @param bytes What `recv` returned.
 * @returns One entry per message.
 */
export function decodeMessages(bytes: Uint8Array): QueueMessage[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const messages: QueueMessage[] = [];
  let at = 0;
  while (at + 16 <= bytes.length) {
    const length = view.getUint32(at, true);
    if (length < 16 || at + length > bytes.length) break;
    const type = view.getUint16(at + 4, true);
    const seq = view.getUint32(at + 8, true);
    if (type === NLMSG_ERROR && length >= 20) {
      messages.push({ kind: "ack", seq, errno: Math.abs(view.getInt32(at + 16, true)) });
    } else if (type === ((SUBSYS_QUEUE << 8) | MSG_PACKET)) {
      const id = packetId(view, at + 20, at + length);
      messages.push(id === undefined ? { kind: "other" } : { kind: "packet", id });
    } else if (type !== NLMSG_DONE) {
      messages.push({ kind: "other" });
    }
    at += align(length);
  }
  return messages;
}

/** The packet id in the attributes from `from` to `to`. */
function packetId(view: DataView, from: number, to: number): number | undefined {
  let at = from;
  while (at + 4 <= to) {
    const length = view.getUint16(at, true);
    const type = view.getUint16(at + 2, true) & 0x3fff;
    if (length < 4) return undefined;
    if (type === ATTR_PACKET_HDR && length >= 8) return view.getUint32(at + 4, false);
    at += align(length);
  }
  return undefined;
}

/** One nfnetlink message of the queue subsystem, with attributes, asking for an acknowledgement (or not). */
function message(
  msg: number,
  queue: number,
  seq: number,
  attributes: [number, Uint8Array][],
  ack = true,
): Uint8Array {
  const size = 20 + attributes.reduce((sum, [, data]) => sum + align(4 + data.length), 0);
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, size, true);
  view.setUint16(4, (SUBSYS_QUEUE << 8) | msg, true);
  view.setUint16(6, ack ? NLM_F_REQUEST | NLM_F_ACK : NLM_F_REQUEST, true);
  view.setUint32(8, seq, true);
  // nfgenmsg: family AF_UNSPEC, version 0, the queue number (big-endian).
  view.setUint16(18, queue, false);
  let at = 20;
  for (const [type, data] of attributes) {
    view.setUint16(at, 4 + data.length, true);
    view.setUint16(at + 2, type, true);
    bytes.set(data, at + 4);
    at += align(4 + data.length);
  }
  return bytes;
}

function align(n: number): number {
  return (n + 3) & ~3;
}
