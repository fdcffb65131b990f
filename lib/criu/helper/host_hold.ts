/**
 * The hold of a tree that shares CRIU's namespace (`NETLOCK_HOLD=1`): its
 * connection lock queues what it stops to a holder in the helper, in
 * netlock's own namespace, from pre-dump on. CRIU sends no action when it
 * lets such a tree run again, so from post-dump on the helper watches the
 * tree's root (its state every 1 ms, through libc: lib/hold/process_state.ts,
 * no process started inside CRIU's window): once it runs (`--leave-running`, a failed dump; its
 * sockets are out of repair mode by then) the lock is opened, everything
 * held let through at once, and the lock removed, without waiting for
 * CRIU to end. After a final dump (the tree killed) the helper outlives
 * CRIU and keeps holding, `KEPT_HOLD_MS` at most, until the restore has
 * opened the lock and asks for the release (`release PID`, from
 * `post-resume`: the restore plan names the helper's directory); held
 * packets are never let into a socket a restore did not bring back: a
 * restore that fails asks nothing, and when the time is up what was held
 * is dropped and the lock drops until a restore, as without holding.
 *
 * @module
 */

import type { Holder } from "../../hold/holder.ts";
import { openConnectionLock, renderConnectionLockOpen } from "../../lock/process.ts";
import { type Primed, primer } from "../primed.ts";
import type { NetlockOptions, OperationResult } from "../../common/types.ts";
import { ownExec } from "../tree_probe.ts";
import type { Channel } from "./channel.ts";
import { openProcessStateReader, type ProcessState } from "../../hold/process_state.ts";

/**
 * How often the watch reads the frozen root's state (ms): a later read is
 * a longer wait for every held peer (1 ms rather than 2: docs/criu.md).
 */
const WATCH_MS = 1;

/**
 * How long a helper keeps holding after a final dump, waiting for the
 * restore (ms; `NETLOCK_HOLD_KEEP_MS` changes it): a restore that comes
 * later finds the lock dropping, as without holding. The queue holds at
 * most `HOLD_MAX_PACKETS` meanwhile (lib/hold/holder.ts).
 */
export const KEPT_HOLD_MS = 60_000;

/** The dumped tree as the hold knows it: its root, start time, and connection lock. */
export interface HeldTree {
  pid: number;
  start: string;
  /** The connection lock that queues to the holder (its backend, families, name). */
  lock?: OperationResult;
}

/** One host tree's holder, from pre-dump until the tree runs again or is gone. */
export class HostHold {
  #holder?: Holder;
  #options: NetlockOptions;
  #log: (line: string) => void;
  #note: (line: string) => void;
  #resume?: { stop: AbortController; done: Promise<void> };
  /** The opening of the lock, started ahead (`nft -f -` waiting for its script). */
  #opening?: { nft: Primed; stop: AbortController };

  /**
   * @param holder The queue held in netlock's own namespace.
   * @param options The hook's options.
   * @param log The helper's log (failures).
   * @param note Where what went as it should is told (how many packets went through).
   */
  constructor(
    holder: Holder,
    options: NetlockOptions,
    log: (line: string) => void,
    note: (line: string) => void = log,
  ) {
    this.#holder = holder;
    this.#options = options;
    this.#log = log;
    this.#note = note;
  }

  /** The queue the tree's connection lock names. */
  get queue(): number | undefined {
    return this.#holder?.queue;
  }

  /**
   * Once the lock is made (pre-dump, before the freeze): the tool that
   * will open it is started now, waiting for its script, so that once the
   * tree runs the opening costs nft's own work, not its start.
   */
  arm(): void {
    if (this.#opening) return;
    const stop = new AbortController();
    this.#opening = { nft: primer([], this.#options.log, stop.signal)("nft", ["-f", "-"]), stop };
  }

  /**
   * From post-dump on: what was held goes through once the tree runs
   * (then `ran`, which removes the lock); a tree gone is `end`'s to decide.
   *
   * @param tree The dumped tree and its lock.
   * @param ran Called once the tree ran again and what was held went through.
   */
  watch(tree: HeldTree, ran: () => Promise<void>): void {
    const stop = new AbortController();
    const done = waitResumed(tree, stop.signal).then(async (now) => {
      // Gone: kept or dropped, as CRIU's end decides (`end`).
      if (now === "runs") {
        await this.#release(tree);
        await ran();
      }
    });
    this.#resume = { stop, done };
  }

  /** CRIU is gone: the watch ends, whatever it saw or not (what it started finishes first). */
  async stopWatch(): Promise<void> {
    this.#resume?.stop.abort();
    await this.#resume?.done;
  }

  /** Whether it still holds (the watch did not let it all through). */
  get holding(): boolean {
    return this.#holder !== undefined;
  }

  /**
   * Once the watch stopped: a tree that runs gets what was held (before
   * its lock is removed); a tree gone after a final dump keeps it held for
   * its restore (`keep`); else it is dropped.
   *
   * @param tree The dumped tree.
   * @param runs Whether it runs on (the helper's one probe once CRIU is gone).
   * @param dumped Whether the dump succeeded (post-dump answered).
   * @returns Whether it still holds, for the restore.
   */
  async end(tree: HeldTree, runs: boolean, dumped: boolean): Promise<boolean> {
    if (!this.#holder) return false;
    if (runs) await this.#release(tree);
    else if (dumped) {
      // The restore's plan opens the lock: the opening started ahead is not needed.
      await this.#disarm();
      return true;
    }
    await this.close();
    return false;
  }

  /**
   * After a final dump: holds for the restore ({@linkcode keepForRestore}).
   *
   * @param channel The helper's FIFOs, which the restore plan names.
   * @param pid The dumped root (a request for another PID is refused).
   * @param keepMs How long to wait for the restore.
   */
  async keep(channel: Channel, pid: number, keepMs?: number): Promise<void> {
    const holder = this.#holder;
    this.#holder = undefined;
    try {
      if (holder) await keepForRestore(holder, channel, pid, keepMs, this.#note, this.#log);
    } finally {
      await this.close();
    }
  }

  /** Drops what is held (the kernel drops it with the queue: fail closed). */
  async close(): Promise<void> {
    const holder = this.#holder;
    this.#holder = undefined;
    await Promise.all([holder?.close(), this.#disarm()]);
  }

  /** The opening started ahead, never used: killed. */
  async #disarm(): Promise<void> {
    const opening = this.#opening;
    this.#opening = undefined;
    opening?.stop.abort();
    await opening?.nft.cancel().catch(() => {});
  }

  /**
   * The tree runs: the connection lock is opened first (nothing deleted: a
   * deleted base chain would drop what is held), then everything held is
   * accepted at once, then what came meanwhile, and the queue closes.
   *
   * Opened first, because the tree answers what it is handed at once: with
   * the lock still closed its answers were queued behind the opening, which
   * the verdict's work slowed down (1,000 connections across a veth, 8
   * interleaved rounds of `bench/criu_hold.ts host 1000 holds`: the opening
   * took 48-99 ms beside the verdict, 3-6 ms before it; 5,400-7,800 packets
   * went through the queue instead of 2,000-3,700; the peers' median wait
   * beyond the freeze 108 ms instead of 36).
   */
  async #release(tree: HeldTree): Promise<void> {
    const holder = this.#holder;
    this.#holder = undefined;
    if (!holder) return;
    const opening = this.#opening;
    this.#opening = undefined;
    const script = tree.lock && renderConnectionLockOpen(tree.lock, tree.pid);
    const opened = tree.lock &&
      ((script && (await opening?.nft.write(script).catch(() => undefined))?.success) ||
        await openConnectionLock(ownExec(this.#options), tree.pid, tree.lock).catch(() => false));
    opening?.stop.abort();
    if (!opened) this.#log("the lock was not opened before the held packets were let through");
    // (Its answer waits for the kernel to hand every held segment on: tens of ms for thousands.)
    await holder.accept().catch(() => {});
    await holder.release().then(
      (released) => this.#note(`let through ${released} held packet(s)`),
      (error) => this.#log(`held packets dropped: ${error.message}`),
    );
  }
}

/**
 * After a final dump: serves `release PID` (the restore opened the lock:
 * everything held goes on, the answer after the first round) until it
 * comes or `keepMs` is up; then the queue closes (what is left dropped).
 * The hold of a host tree's connection lock, and of a namespace that
 * outlives the dump (a pod's).
 *
 * @param holder What the lock queues to.
 * @param channel The helper's FIFOs, which the restore plan names.
 * @param pid The dumped root (a request for another PID is refused).
 * @param keepMs How long to wait for the restore (default `KEPT_HOLD_MS`).
 * @param note Where the released count is told.
 * @param log Where a failure is told.
 */
export async function keepForRestore(
  holder: Holder,
  channel: Channel,
  pid: number,
  keepMs: number | undefined,
  note: (line: string) => void,
  log: (line: string) => void,
): Promise<void> {
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), keepMs ?? KEPT_HOLD_MS);
  let released = false;
  try {
    for await (const line of channel.requests(stop.signal)) {
      if (line === "exit") break;
      if (line !== `release ${pid}`) {
        await channel.answer(`error not the holder of that request: ${line}`);
        continue;
      }
      released = true;
      await holder.release({ afterFirst: () => channel.answer("ok") }).then(
        (count) => note(`let through ${count} held packet(s) at the restore`),
        (error) => log(`held packets dropped: ${error.message}`),
      );
      break;
    }
  } finally {
    clearTimeout(timer);
    if (!released) await holder.close();
  }
}

/**
 * Waits until the frozen root runs again (out of tracing stop, no longer
 * traced, alive, not exiting, no SIGKILL pending, and still so one read
 * later: a process killed once CRIU let it go may show none of it for a
 * moment) or is gone; `frozen` when `stop` ends the wait first, or when
 * libc cannot be opened.
 */
async function waitResumed(tree: HeldTree, stop: AbortSignal): Promise<ProcessState> {
  let reader;
  try {
    reader = openProcessStateReader();
  } catch {
    return "frozen";
  }
  const tick = () => new Promise((resolve) => setTimeout(resolve, WATCH_MS));
  try {
    let seen: ProcessState = "frozen";
    while (!stop.aborted) {
      const now = reader.state(tree.pid, tree.start);
      if (now === "gone" || (now === "runs" && seen === "runs")) return now;
      seen = now;
      await tick();
    }
    return "frozen";
  } finally {
    reader.close();
  }
}
