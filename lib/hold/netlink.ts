/**
 * A netfilter netlink socket through libc (Deno's FFI: `--allow-ffi`),
 * opened in a given network namespace: the thread that opens it enters the
 * namespace (setns), makes the socket, and comes back; the socket stays in
 * the namespace it was made in.
 *
 * @module
 */

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_NETFILTER = 12;
const CLONE_NEWNET = 0x40000000;
const O_RDONLY = 0;
const O_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_RCVBUFFORCE = 33;
const MSG_DONTWAIT = 0x40;
const POLLIN = 1;
const EAGAIN = 11;
const ENOBUFS = 105;

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  // The same call on a thread of its own: batch verdicts at once (their
  // work, handing held packets on, is done in the sender's system call).
  send_on_thread: {
    name: "send",
    parameters: ["i32", "buffer", "usize", "i32"],
    result: "isize",
    nonblocking: true,
  },
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  close: { parameters: ["i32"], result: "i32" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  setns: { parameters: ["i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** The calling thread's errno. */
function errnoOf(c: Libc): number {
  const at = c.__errno_location();
  return at === null ? 0 : new Deno.UnsafePointerView(at).getInt32();
}

function cString(text: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(`${text}\0`) as Uint8Array<ArrayBuffer>;
}

/** A netfilter netlink socket. */
export interface NetfilterSocket {
  /** Sends one message; throws on failure. */
  send(bytes: Uint8Array): void;
  /**
   * Waits up to `timeoutMs` for data, then reads what is there without
   * blocking: `[]` when nothing came; `"overrun"` when the kernel had to
   * drop messages to this socket (ENOBUFS).
   */
  receive(timeoutMs: number): Promise<Uint8Array[] | "overrun">;
  /**
   * Sends the messages at once, each from a thread of its own (one message:
   * from this one); throws when one could not be sent whole.
   */
  sendAll(messages: Uint8Array[]): Promise<void>;
  /**
   * The text of `/proc/net/netfilter/nfnetlink_queue` of the socket's
   * network namespace (`""` when it cannot be read).
   */
  queueStats(): string;
  /** Closes it (the kernel then unbinds its queues and drops what they hold). */
  close(): void;
}

/**
 * Opens a netfilter netlink socket in the network namespace of `netns` (a
 * path such as `/proc/PID/ns/net` or `/run/netns/NAME`; `undefined`: this
 * thread's own), with a receive buffer of `receiveBuffer` bytes.
 *
 * @example
 * ```ts
 * import { openNetfilterSocket } from "./netlink.ts";
 *
 * // Needs root and --allow-ffi: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const socket = openNetfilterSocket("/run/netns/blue");
 *   socket.close();
 * }
 * ```
 *
 * @param netns Where the socket lives.
 * @param receiveBuffer Its receive buffer (SO_RCVBUFFORCE: root).
 * @returns The socket.
 */
export function openNetfilterSocket(
  netns?: string,
  receiveBuffer = 8 << 20,
): NetfilterSocket {
  // libc, opened for this socket and closed with it (throws without --allow-ffi).
  const library = Deno.dlopen("libc.so.6", SYMBOLS);
  const c = library.symbols;
  const failure = (what: string) => failureOf(c, what);
  try {
    return open(c, library, failure, netns, receiveBuffer);
  } catch (error) {
    library.close();
    throw error;
  }
}

function open(
  c: Libc,
  library: Deno.DynamicLibrary<typeof SYMBOLS>,
  failure: (what: string) => Error,
  netns: string | undefined,
  receiveBuffer: number,
): NetfilterSocket {
  let back = -1;
  let fd = -1;
  let stats = -1;
  try {
    if (netns !== undefined) {
      back = c.open(cString("/proc/thread-self/ns/net"), O_RDONLY | O_CLOEXEC);
      if (back < 0) throw failure("open /proc/thread-self/ns/net");
      const target = c.open(cString(netns), O_RDONLY | O_CLOEXEC);
      if (target < 0) throw failure(`open ${netns}`);
      const entered = c.setns(target, CLONE_NEWNET);
      const why = entered < 0 ? failure(`setns ${netns}`) : undefined;
      c.close(target);
      if (why) throw why;
    }
    fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) throw failure("socket(AF_NETLINK, NETLINK_NETFILTER)");
    // The queues' statistics of this namespace: a file of /proc/net is the
    // namespace's it was opened in (-1 without: nothing is split).
    stats = c.open(
      cString("/proc/thread-self/net/netfilter/nfnetlink_queue"),
      O_RDONLY | O_CLOEXEC,
    );
  } finally {
    if (back >= 0) {
      // Back to this thread's own namespace, whatever happened.
      const returned = c.setns(back, CLONE_NEWNET);
      c.close(back);
      if (returned < 0) {
        if (fd >= 0) c.close(fd);
        if (stats >= 0) c.close(stats);
        // deno-lint-ignore no-unsafe-finally
        throw failure("setns back to netlock's own namespace");
      }
    }
  }
  const address = new Uint8Array(12);
  new DataView(address.buffer).setUint16(0, AF_NETLINK, true);
  if (c.bind(fd, address, 12) < 0) {
    const why = failure("bind(AF_NETLINK)");
    c.close(fd);
    if (stats >= 0) c.close(stats);
    throw why;
  }
  const size = new Uint8Array(4);
  new DataView(size.buffer).setInt32(0, receiveBuffer, true);
  c.setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, size, 4);
  const buffer = new Uint8Array(1 << 16);
  const statsBuffer = new Uint8Array(1 << 14);
  const pollfd = new Uint8Array(8);
  new DataView(pollfd.buffer).setInt32(0, fd, true);
  new DataView(pollfd.buffer).setInt16(4, POLLIN, true);
  let closed = false;
  return {
    send(bytes) {
      const sent = c.send(fd, bytes as Uint8Array<ArrayBuffer>, BigInt(bytes.length), 0);
      if (Number(sent) !== bytes.length) throw failure("send");
    },
    async sendAll(messages) {
      if (messages.length === 1) return this.send(messages[0]);
      const sent = await Promise.all(
        messages.map((bytes) =>
          c.send_on_thread(fd, bytes as Uint8Array<ArrayBuffer>, BigInt(bytes.length), 0)
        ),
      );
      // (errno is per thread: the failed call's is not this thread's to read.)
      if (sent.some((n, i) => Number(n) !== messages[i].length)) throw new Error("send failed");
    },
    queueStats() {
      if (stats < 0 || closed) return "";
      const n = Number(c.pread(stats, statsBuffer, BigInt(statsBuffer.length), 0n));
      return n > 0 ? new TextDecoder().decode(statsBuffer.subarray(0, n)) : "";
    },
    async receive(timeoutMs) {
      if (closed) return [];
      await c.poll(pollfd, 1n, timeoutMs);
      const out: Uint8Array[] = [];
      while (!closed) {
        const n = Number(c.recv(fd, buffer, BigInt(buffer.length), MSG_DONTWAIT));
        if (n > 0) {
          out.push(buffer.slice(0, n));
          continue;
        }
        const errno = n < 0 ? errnoOf(c) : 0;
        if (errno === ENOBUFS) return "overrun";
        if (n < 0 && errno !== EAGAIN) throw failure("recv");
        break;
      }
      return out;
    },
    close() {
      if (closed) return;
      closed = true;
      c.close(fd);
      if (stats >= 0) c.close(stats);
      // (No call is in flight: the caller awaits its receive first.)
      library.close();
    },
  };
}

function failureOf(c: Libc, what: string): Error {
  const code = errnoOf(c);
  const error = new Error(`${what}: errno ${code}`) as Error & { errno: number };
  error.errno = code;
  return error;
}
