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

import { decodeMessages, encodeAcceptUpTo, encodeBind, encodeUnbind } from "./nfqueue.ts";
import { type NetfilterSocket, openNetfilterSocket } from "./netlink.ts";

/** The most packets one holder holds (NFQA_CFG_QUEUE_MAXLEN); the kernel drops the rest. */
export const HOLD_MAX_PACKETS = 4096;

/** The first queue number a holder tries; it takes the first free one above. */
export const HOLD_FIRST_QUEUE = 0xc114;

/** How many queue numbers a holder tries before it gives up. */
const QUEUE_TRIES = 256;

/** How long a request waits for the kernel's answer (ms). */
const ANSWER_MS = 2_000;

/** A queue held. */
export interface Holder {
  /** The queue number its rules must name (`-j NFQUEUE --queue-num N`). */
  readonly queue: number;
  /** How many packets it holds now. */
  held(): number;
  /**
   * Accepts everything held at once (call it once the rules are gone),
   * then closes the queue.
   *
   * @returns How many packets it accepted.
   */
  release(): Promise<number>;
  /** Closes the queue: the kernel drops what it holds (fail closed). */
  close(): Promise<void>;
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

/** One socket's packets and answers, read by one loop. */
class QueueState {
  #socket: NetfilterSocket;
  #seq = 0;
  #answers = new Map<number, (errno: number) => void>();
  #highest = 0;
  #accepted = 0;
  #acceptedUpTo = 0;
  #count = 0;
  #stopped = false;
  #loop: Promise<void>;

  constructor(socket: NetfilterSocket) {
    this.#socket = socket;
    this.#loop = this.#read();
  }

  async #read(): Promise<void> {
    while (!this.#stopped) {
      const got = await this.#socket.receive(20).catch(() => [] as Uint8Array[]);
      if (got === "overrun") continue;
      for (const bytes of got) {
        for (const message of decodeMessages(bytes)) {
          if (message.kind === "packet") {
            this.#count++;
            if (message.id > this.#highest) this.#highest = message.id;
          } else if (message.kind === "ack") {
            this.#answers.get(message.seq)?.(message.errno);
            this.#answers.delete(message.seq);
          }
        }
      }
    }
  }

  /** Sends a request and waits for its answer (the errno; -1: none came). */
  request(encode: (seq: number) => Uint8Array): Promise<number> {
    const seq = ++this.#seq;
    const answered = new Promise<number>((resolve) => {
      const timer = setTimeout(() => {
        this.#answers.delete(seq);
        resolve(-1);
      }, ANSWER_MS);
      this.#answers.set(seq, (errno) => {
        clearTimeout(timer);
        resolve(errno);
      });
    });
    this.#socket.send(encode(seq));
    return answered;
  }

  holder(queue: number): Holder {
    return {
      queue,
      held: () => this.#count - this.#accepted,
      release: async () => {
        // Two rounds: what the loop read (it reads as soon as a message
        // comes), then what was still on its way through the rules.
        for (const wait of [5, 20]) {
          await new Promise((resolve) => setTimeout(resolve, wait));
          const upTo = this.#highest;
          if (upTo > this.#acceptedUpTo) {
            const errno = await this.request((seq) => encodeAcceptUpTo(queue, upTo, seq));
            // ENOENT: nothing held any more (the kernel dropped it: a hook
            // of the lock's rules was unregistered before the release).
            if (errno !== 0 && errno !== 2) {
              throw new Error(`cannot accept what queue ${queue} holds: errno ${errno}`);
            }
            this.#acceptedUpTo = upTo;
            if (errno === 0) this.#accepted = this.#count;
            else this.#count = this.#accepted;
          }
        }
        const accepted = this.#accepted;
        await this.request((seq) => encodeUnbind(queue, seq));
        await this.stop();
        return accepted;
      },
      close: () => this.stop(),
    };
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#loop;
    this.#socket.close();
  }
}
