/**
 * A holder: what a lock would drop is queued by its rules (NFQUEUE) and
 * held in the kernel (metadata only reaches netlock) until the lock goes;
 * then everything held is accepted at once, so that the peers' TCP does
 * not wait for a retransmission timeout. It fails closed: a holder that
 * dies or closes takes its queue with it and the kernel drops what it held
 * and what comes (the rules never say `bypass`); a full queue drops the
 * excess.
 *
 * @module
 */

import {
  decodeMessages,
  encodeAcceptUpTo,
  encodeBind,
  encodeUnbind,
  parseQueueStats,
} from "./nfqueue.ts";
import { type NetfilterSocket, openNetfilterSocket } from "./netlink.ts";

/** The most packets one holder holds (NFQA_CFG_QUEUE_MAXLEN); the kernel drops the rest. */
export const HOLD_MAX_PACKETS = 4096;

/** The first queue number a holder tries; it takes the first free one above. */
export const HOLD_FIRST_QUEUE = 0xc114;

/** How many queue numbers a holder tries before it gives up. */
const QUEUE_TRIES = 256;

/**
 * The id a release accepts up to: every packet a queue holds, as ids count
 * up from 1 on its binding and a batch verdict compares them in serial
 * number order (2^31 of them before it would miss one).
 */
const ACCEPT_ALL = 0x7fffffff;

/** How long a request waits for the kernel's answer (ms). */
const ANSWER_MS = 2_000;

/**
 * From this many packets held on, a release lets them through in two batch
 * verdicts at once, each sent from a thread of its own: the kernel hands
 * each held packet on inside the verdict's system call, and two calls use
 * two cores. 1,000 connections of a host tree held across a
 * `--leave-running` dump (2,500-3,400 packets, 8 interleaved rounds of
 * `bench/criu_hold.ts host 1000`, 2 cores): 18-31 ms instead of 39-70 ms.
 */
const SPLIT_FROM = 256;

/** A queue held. */
export interface Holder {
  /** The queue number its rules must name (`-j NFQUEUE --queue-num N`). */
  readonly queue: number;
  /** How many packets it holds now (what the kernel told it so far). */
  held(): Promise<number>;
  /**
   * Accepts everything held so far (one batch verdict) and goes on
   * holding: for a lock not yet opened whose tree can answer already.
   */
  accept(): Promise<void>;
  /**
   * Accepts everything held at once (call it once the rules are gone or
   * opened), in two rounds (what was held, then what was still on its way
   * through the rules), then closes the queue.
   *
   * @param options How long to wait before each round (ms; default 0 and
   *   20: what comes just after the rules went), and what to do after the
   *   first (answer a caller that waits).
   * @returns How many packets it accepted.
   */
  release(options?: ReleaseOptions): Promise<number>;
  /** Closes the queue: the kernel drops what it holds (fail closed). */
  close(): Promise<void>;
}

/** How a holder lets what it holds through. */
export interface ReleaseOptions {
  /** The wait before each round (ms). */
  waits?: readonly number[];
  /** Called once the first round was accepted. */
  afterFirst?: () => Promise<void>;
}

/**
 * Binds a free queue in the network namespace `netns` (a path; `undefined`:
 * netlock's own) and holds what its rules send there.
 *
 * @example
 * ```ts
 * import { holdQueue } from "./holder.ts";
 *
 * // Needs root and --allow-ffi: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const holder = await holdQueue("/run/netns/blue");
 *   // iptables -A ... -j NFQUEUE --queue-num ${holder.queue}; later, the rule removed:
 *   console.log(`${await holder.release()} packets accepted`);
 * }
 * ```
 *
 * @param netns Where the lock's rules are.
 * @param options The first queue number to try, the most packets held.
 * @returns The holder.
 */
export async function holdQueue(
  netns?: string,
  options: { firstQueue?: number; maxPackets?: number } = {},
): Promise<Holder> {
  const socket = openNetfilterSocket(netns);
  const state = new QueueState(socket);
  const first = options.firstQueue ?? HOLD_FIRST_QUEUE;
  const maxPackets = options.maxPackets ?? HOLD_MAX_PACKETS;
  try {
    for (let i = 0; i < QUEUE_TRIES; i++) {
      const queue = (first + i) % 65536;
      // EPERM: another socket holds that queue number.
      const errno = await state.request((seq) => encodeBind(queue, maxPackets, seq));
      if (errno === 0) return state.holder(queue);
      if (errno !== 1) throw new Error(`cannot bind queue ${queue}: errno ${errno}`);
    }
    throw new Error(`no free queue among ${QUEUE_TRIES} from ${first}`);
  } catch (error) {
    await state.stop();
    throw error;
  }
}

/**
 * One socket's packets and answers. Read only when asked (a request's
 * answer, `held`): while it holds, the kernel's messages about the queued
 * packets wait in the socket's receive buffer (8 MiB, more than
 * `HOLD_MAX_PACKETS` of them take), and netlock spends no time on them
 * while the tree is frozen; a release accepts them all by id without
 * reading them, and counts them from the kernel's counts.
 */
class QueueState {
  #socket: NetfilterSocket;
  #seq = 0;
  #answers = new Map<number, number>();
  #count = 0;
  #stopped = false;
  /** One reader at a time: the last read (or request) in line. */
  #turn: Promise<unknown> = Promise.resolve();

  constructor(socket: NetfilterSocket) {
    this.#socket = socket;
  }

  #exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#turn.then(task, task);
    this.#turn = run.catch(() => {});
    return run;
  }

  /** Reads what the socket has, waiting up to `waitMs` for it; whether anything came. */
  async #readOnce(waitMs: number): Promise<boolean> {
    if (this.#stopped) return false;
    const got = await this.#socket.receive(waitMs).catch(() => [] as Uint8Array[]);
    // Overrun: messages were lost (their packets dropped); the later ones still come.
    if (got === "overrun") return true;
    for (const bytes of got) {
      for (const message of decodeMessages(bytes)) {
        if (message.kind === "packet") {
          this.#count++;
        } else if (message.kind === "ack") {
          this.#answers.set(message.seq, message.errno);
        }
      }
    }
    return got.length > 0;
  }

  /** Reads every message the socket holds. */
  drain(): Promise<void> {
    return this.#exclusive(async () => {
      while (await this.#readOnce(0));
    });
  }

  /** Sends a request and waits for its answer (the errno; -1: none came). */
  request(encode: (seq: number) => Uint8Array): Promise<number> {
    return this.#exclusive(async () => {
      const seq = ++this.#seq;
      this.#socket.send(encode(seq));
      const deadline = performance.now() + ANSWER_MS;
      while (!this.#answers.has(seq) && !this.#stopped) {
        const left = deadline - performance.now();
        if (left <= 0) break;
        await this.#readOnce(Math.ceil(Math.min(20, left)));
      }
      const errno = this.#answers.get(seq) ?? -1;
      this.#answers.delete(seq);
      return errno;
    });
  }

  holder(queue: number): Holder {
    return {
      queue,
      held: async () => {
        await this.drain();
        return this.#count;
      },
      accept: async () => {
        await this.#acceptAll(queue);
      },
      release: async ({ waits = [0, 20], afterFirst }: ReleaseOptions = {}) => {
        // Two rounds: what was queued when the rules opened, then what was
        // still on its way through them. Each accepts every id the queue
        // gave so far (ids count up from 1 on a queue's binding; a batch
        // verdict takes those up to an id, in serial-number order), without
        // reading the kernel's messages: thousands of them wait in the
        // socket, and reading them would delay the peers.
        for (const [round, wait] of waits.entries()) {
          await new Promise((resolve) => setTimeout(resolve, wait));
          await this.#acceptAll(queue);
          if (round === 0) await afterFirst?.();
        }
        // What went through, for the report: every id given, but those the
        // kernel dropped (its holder's socket full) and those still held,
        // which the closing drops. Without the kernel's counts: every
        // message read, and the queue unbound on an acknowledgement.
        const end = parseQueueStats(this.#socket.queueStats(), queue);
        let accepted: number;
        if (end) {
          accepted = end.lastId - end.userDropped - end.held;
        } else {
          await this.drain();
          accepted = this.#count;
          await this.request((seq) => encodeUnbind(queue, seq));
        }
        // Closing the socket unbinds the queue (the kernel's release of the port).
        await this.stop();
        return accepted;
      },
      close: () => this.stop(),
    };
  }

  /**
   * Every packet the queue holds goes on: one batch verdict, or, when it
   * holds many (`SPLIT_FROM`), two at once, up to the middle of the held
   * ids and up to the end. Whichever the kernel takes first, the two take
   * all between them (the one that finds nothing left fails with ENOENT).
   *
   * The kernel hands the packets on inside the verdict's system call, so
   * once the sends returned the verdicts are done; they ask for no
   * acknowledgement, which would wait in the socket behind the kernel's
   * message about every held packet: reading those, on the cores that hand
   * the packets on, made the verdicts of a host tree's 1,000 connections
   * (2,600-3,900 packets) take 43 ms instead of 24 (medians of 30
   * interleaved rounds of `bench/criu_hold.ts host 1000`). A verdict the
   * kernel refused leaves its packets held, and the report counts them out;
   * without the kernel's counts (`/proc/net/netfilter/nfnetlink_queue`
   * unreadable) each verdict is acknowledged and checked.
   */
  async #acceptAll(queue: number): Promise<void> {
    const stats = parseQueueStats(this.#socket.queueStats(), queue);
    if (stats === undefined) {
      const errno = await this.request((seq) => encodeAcceptUpTo(queue, ACCEPT_ALL, seq));
      // ENOENT: nothing held (none came, or the kernel dropped it: a hook of
      // the lock's rules was unregistered before the release).
      if (errno !== 0 && errno !== 2) {
        throw new Error(`cannot accept what queue ${queue} holds: errno ${errno}`);
      }
      return;
    }
    const upTo = stats.held >= SPLIT_FROM
      ? [stats.lastId - Math.floor(stats.held / 2), ACCEPT_ALL]
      : [ACCEPT_ALL];
    await this.#exclusive(() =>
      this.#socket.sendAll(upTo.map((id) => encodeAcceptUpTo(queue, id, ++this.#seq, false)))
    );
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    // No read is in flight once the last in line is done.
    await this.#exclusive(() => Promise.resolve());
    this.#socket.close();
  }
}
