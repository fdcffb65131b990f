/**
 * The dump side of the helper. At `pre-dump`, before CRIU freezes
 * anything: a tree in a namespace of its own gets its lock and unlock
 * armed and its restore planned; a tree in CRIU's namespace (which CRIU
 * sends no network-lock) is locked now (lib/criu/tree_lock.ts). Inside the
 * frozen window: `lock PID` fires the armed lock; `post-dump PID` makes a
 * host tree's lock outlive it (completed with the connections CRIU's images
 * hold) and plans its restore. Once CRIU is gone: the one rule of
 * docs/criu.md (a tree that runs again keeps nothing; after a final dump
 * the dumped connections stay locked, and nothing more). A lock that holds
 * (`NETLOCK_HOLD=1`) lets what it held through once the tree can answer: a
 * namespace's at network-unlock (./unlock_session.ts), a host tree's as
 * soon as CRIU lets the tree run (./host_hold.ts), and drops it when the
 * tree is gone.
 *
 * @module
 */

import { type ArmedLock, armNetworkLock } from "../armed.ts";
import { type DumpedSockets, isExternalNetns, parseDumpedSockets } from "../dumped_sockets.ts";
import {
  removeRestorePlan,
  type RestorePlanned,
  writeRestorePlan,
  writeTreePlan,
} from "../plan.ts";
import type { UnlockSession } from "./unlock_session.ts";
import { HostHold, keepForRestore } from "./host_hold.ts";
import type { Channel } from "./channel.ts";
import {
  completeTreeLock,
  lockTreeBeforeFreeze,
  lockTreeConnections,
  type TreeLocked,
  unlockKept,
} from "../tree_lock.ts";
import { keptNote } from "../notes.ts";
import { identifyTree, stillRuns, type TreePlace } from "../tree_probe.ts";
import { lockNetwork, unlockNetwork } from "../../operations.ts";
import type { NetlockOptions } from "../../common/types.ts";
import { holdQueue } from "../../hold/holder.ts";

/** What the dump session needs of the helper's settings. */
export interface DumpSettings {
  /** The lock options. */
  options: NetlockOptions;
  /** CRIU's image directory (its real path), where the restore's plan goes. */
  images?: string;
  /** The helper's directory: a restore plan names it when the helper keeps holding for it. */
  dir?: string;
  /** The helper's log. */
  log: (line: string) => void;
  /** What the user should know but is no failure. */
  warn: (line: string) => void;
  /** What went as it should, told in CRIU's log (how many held packets went through). */
  note?: (line: string) => void;
  /** Hold what the lock stops until the tree can answer (`NETLOCK_HOLD=1`, iptables). */
  hold?: boolean;
}

/** A hold kept after a final dump: serves the restore's `release PID` until it comes or `keepMs` is up. */
export interface Kept {
  keep(channel: Channel, keepMs?: number): Promise<void>;
}

/** One dump: its armed lock, the dumped tree, and how far the dump went. */
export class DumpSession {
  #settings: DumpSettings;
  #unlocks: UnlockSession;
  /** What is armed, for which PID; an arm that failed is redone by the ordinary lock when fired. */
  #lock?: { pid: number; armed: Promise<ArmedLock | undefined> };
  /** The dumped tree, to tell when CRIU is gone whether it runs again. */
  #dumped?: { pid: number; start: string; place: TreePlace; locked?: TreeLocked };
  #postDumped = false;
  /** A host tree's cgroup lock goes once its connections are locked by address. */
  #narrowed?: Promise<void>;
  /** The queue the lock sends what it stops to, when it holds. */
  #queue?: number;
  /** A host tree's hold (a namespace's holder is the unlock's). */
  #held?: HostHold;

  /**
   * @param settings The options, the image directory, the logs.
   * @param unlocks The helper's unlock (a dump arms it for the lock it makes).
   */
  constructor(settings: DumpSettings, unlocks: UnlockSession) {
    this.#settings = settings;
    this.#unlocks = unlocks;
  }

  /**
   * `pre-dump` (criu-hook.sh waits for the answer, before CRIU freezes
   * anything): a tree in a namespace of its own gets its lock and the
   * unlock of that lock armed, and its restore planned, so that inside the
   * window only armed tools are fed; a tree that shares CRIU's namespace
   * gets no network-lock: it is locked now.
   *
   * @returns The answer: `ready PLACE` (`ready host`, `ready netns`) or `error MESSAGE`.
   */
  async preDump(pid: number): Promise<string> {
    const { options, images, warn } = this.#settings;
    if (images) await removeRestorePlan(images);
    const { start, place } = await identifyTree(pid, options);
    this.#dumped = { pid, start, place };
    if (this.#settings.hold) await this.#hold(pid, place);
    if (place === "host") {
      try {
        // The opening's tool first: the lock goes in last, just before the freeze.
        this.#held?.arm();
        const locked = this.#dumped.locked = await lockTreeBeforeFreeze(pid, this.#lockOptions());
        if (locked.note) warn(locked.note);
        return `ready ${place}`;
      } catch (error) {
        await this.#held?.close();
        return `error ${(error as Error).message}`;
      }
    }
    const lock = (await this.#arm(pid).armed)?.lock;
    if (lock) {
      await Promise.all([this.#unlocks.arm(pid, lock), this.#planRestore({ ...lock, pid })]);
    }
    return `ready ${place}`;
  }

  /** `lock PID` (network-lock, inside the window): fires the armed lock, or locks the ordinary way. */
  async lock(pid: number, answer: (line: string) => Promise<void>): Promise<void> {
    const armed = await (this.#lock?.pid === pid ? this.#lock : this.#arm(pid)).armed;
    this.#lock = undefined;
    try {
      const locked = await (armed ? armed.fire() : lockNetwork(pid, this.#lockOptions()));
      await answer("ok");
      // Not the lock planned at pre-dump (the armed one fell back): arm
      // and plan again, for this very lock, while CRIU dumps.
      if (!this.#unlocks.armedFor(pid, locked)) {
        this.#unlocks.arm(pid, locked);
        if (locked.mode === "netns") await this.#planRestore({ ...locked, pid });
      }
    } catch (error) {
      await answer(`error ${(error as Error).message}`);
    }
  }

  /**
   * `post-dump PID`: the dump succeeded, the tree is still frozen. A tree in
   * CRIU's namespace is locked by connection now, to outlive it: the lock
   * made before the freeze, completed with what the dump took (CRIU's
   * images are written by now), else made anew; then its restore is planned
   * and its cgroup lock goes.
   */
  async postDump(pid: number, answer: (line: string) => Promise<void>): Promise<void> {
    const { images, log, warn } = this.#settings;
    const options = this.#lockOptions();
    const dumped = this.#dumped;
    if (!(dumped?.place === "host" && dumped.pid === pid)) {
      this.#postDumped = true;
      await answer("ok");
      return;
    }
    try {
      const taken = await dumpedSockets(images, log);
      const result = (taken &&
        await completeTreeLock(pid, options, dumped.locked, taken).catch(() => undefined)) ??
        await lockTreeConnections(pid, options, dumped.locked);
      // Without its plan the restore could not unlock the tree: no such dump.
      if (!images) throw new Error("CRIU's image directory is unknown");
      await writeTreePlan(images, result, pid, this.#held ? this.#settings.dir : undefined);
      this.#postDumped = true;
      await answer("ok");
      // A tree that runs on keeps nothing (end() then finds nothing left).
      this.#held?.watch(
        { ...dumped, lock: dumped.locked?.result },
        () =>
          unlockKept(pid, options, ["connections", "cgroup"]).then(
            () => this.#dumped = undefined,
            (error) => log(`unlock once the tree ran again: ${error.message}`),
          ),
      );
      warn(keptNote(pid, result));
    } catch (error) {
      await answer(
        `error criu-hook: cannot keep process ${pid} locked for its restore: ` +
          (error as Error).message,
      );
    }
    // The dumped connections are locked by address: the cgroup lock
    // (which would cut off a fallback started in that cgroup) goes.
    if (this.#postDumped && dumped.locked?.kind === "cgroup") {
      this.#narrowed = unlockKept(pid, options, ["cgroup"]).then(
        () => {},
        (error) => log(`the cgroup lock of process ${pid} stays: ${error.message}`),
      );
    }
  }

  /**
   * CRIU is gone. Without an unlock, a tree that runs again (--leave-running
   * of a tree in CRIU's namespace, a failed dump, a CRIU that died) keeps
   * nothing; after a final dump (the tree is gone) a host tree's dumped
   * connections stay locked for the restore, and nothing more; a tree in a
   * namespace of its own keeps the namespace locked. An armed lock never
   * fired is cancelled.
   *
   * After a final dump of a held tree whose lock outlives it (a host
   * tree's connection lock; the lock of a namespace that outlives the tree,
   * a pod's, which CRIU was told is external), what is held stays held for
   * the restore: the answer's `keep` serves the restore's `release PID`.
   * A namespace the dump took dies with the tree: what it held is dropped
   * (a socket holding its queue would keep it alive).
   *
   * @param unlocked Whether CRIU's unlock came and succeeded.
   * @returns After a final dump of a held tree: the keeping, still holding for the restore.
   */
  async end(unlocked: boolean): Promise<Kept | undefined> {
    await this.#narrowed;
    const held = this.#held;
    await held?.stopWatch();
    // (Unset if the watch saw the tree run and unlocked it.) Whether it runs on: one probe.
    const dumped = this.#dumped;
    const runs = dumped && (held?.holding || !unlocked)
      ? await stillRuns(dumped.pid, dumped.start, this.#settings.options)
      : false;
    const tree = dumped && { ...dumped, lock: dumped.locked?.result };
    const kept = tree && held && await held.end(tree, runs, this.#postDumped);
    if (!kept) await held?.close();
    if (dumped && !unlocked) {
      await afterCriu(dumped, runs, this.#postDumped, this.#settings.options, this.#settings.log);
    }
    await (await this.#lock?.armed)?.cancel();
    if (kept && held && dumped) {
      return { keep: (channel, keepMs) => held.keep(channel, dumped.pid, keepMs) };
    }
    // A namespace that outlives the tree keeps its whole lock (afterCriu):
    // what its queue holds waits for the restore too.
    const outlives = dumped?.place === "netns" && !unlocked && !runs && this.#postDumped &&
      await namespaceOutlives(this.#settings.images, this.#settings.log);
    const holder = outlives ? this.#unlocks.takeHolder() : undefined;
    if (!holder || !dumped) return undefined;
    const { note = this.#settings.log, log } = this.#settings;
    return {
      keep: (channel, keepMs) => keepForRestore(holder, channel, dumped.pid, keepMs, note, log),
    };
  }

  #arm(pid: number): { pid: number; armed: Promise<ArmedLock | undefined> } {
    const armed = armNetworkLock(pid, this.#lockOptions()).catch(() => undefined);
    return this.#lock = { pid, armed };
  }

  /** The lock's options: the hook's, and the queue when the lock holds. */
  #lockOptions(): NetlockOptions {
    const { options } = this.#settings;
    return this.#queue === undefined ? options : { ...options, queue: this.#queue };
  }

  /** A holder where the lock is (a namespace's goes to the unlock); without one, the lock drops (CRIU's log says so). */
  async #hold(pid: number, place: TreePlace): Promise<void> {
    const { options, log, warn, note } = this.#settings;
    if ((options.backend ?? "iptables") !== "iptables") {
      return warn(
        "not holding: the nftables backend drops what it stops (NETLOCK_HOLD needs iptables)",
      );
    }
    try {
      const holder = await holdQueue(place === "host" ? undefined : `/proc/${pid}/ns/net`);
      this.#queue = holder.queue;
      if (place === "netns") this.#unlocks.hold(holder);
      else this.#held = new HostHold(holder, options, log, note);
    } catch (error) {
      warn(`not holding: ${(error as Error).message}`);
    }
  }

  /** The restore's unlock of a namespace lock, next to the images; a failure only costs the restore its fast path (cli.ts finds the lock without it). */
  async #planRestore(lock: RestorePlanned): Promise<void> {
    const { images, log, dir } = this.#settings;
    if (!images) return;
    // Holding: the helper may keep holding for the restore (end()).
    const hold = this.#queue !== undefined ? dir : undefined;
    await writeRestorePlan(images, lock, hold).catch((error) =>
      log(`restore plan not written: ${error.message}`)
    );
  }
}

/**
 * What stays of a dump's lock once CRIU is gone without an unlock (the one
 * rule of docs/criu.md): a tree that runs again keeps nothing; a host tree
 * gone after its dump keeps its dumped connections, locked by address (no
 * cgroup lock), gone without a successful dump, nothing; a tree in a
 * namespace of its own that is gone keeps the whole namespace lock (until
 * its restore, or an operator). Exactly the locks the dump made, by name
 * and kind, in netlock's own namespace for a host tree (never whatever
 * namespace its PID may be in by now). `runs`: the one probe's answer.
 */
async function afterCriu(
  dumped: { pid: number; place: TreePlace },
  runs: boolean,
  postDumped: boolean,
  options: NetlockOptions,
  log: (line: string) => void,
): Promise<void> {
  const failed = (error: Error) => log(`unlock after CRIU ended: ${error.message}`);
  if (dumped.place === "netns") {
    // A final dump keeps the whole namespace locked until its restore
    // (CRIU's contract, zdtm's netns_lock tests): a namespace that outlives
    // the tree narrows only after a restore that failed (the restore's
    // watcher, lib/criu/hook/actions.sh).
    if (runs) await unlockNetwork(dumped.pid, options).catch(failed);
    return;
  }
  const kinds = runs || !postDumped ? ["connections", "cgroup"] as const : ["cgroup"] as const;
  await unlockKept(dumped.pid, options, [...kinds]).catch(failed);
}

/**
 * Whether the dumped tree's network namespace outlives it: CRIU took no
 * namespace, but was told of one as external (every `netns-ID.img` holds
 * only its key: a pod's namespace, which the restore joins). `false` when
 * the images cannot be read.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { namespaceOutlives } from "./dump_session.ts";
 *
 * // No image directory: nothing to tell it by.
 * assert.equal(await namespaceOutlives(undefined, () => {}), false);
 * ```
 *
 * @param images CRIU's image directory.
 * @param log Where an image that cannot be read is told.
 * @returns `true` when every network namespace image is an external one's.
 */
export async function namespaceOutlives(
  images: string | undefined,
  log: (line: string) => void,
): Promise<boolean> {
  if (!images) return false;
  try {
    let found = false;
    for await (const entry of Deno.readDir(images)) {
      if (!/^netns-[0-9]+\.img$/.test(entry.name)) continue;
      if (!isExternalNetns(await Deno.readFile(`${images}/${entry.name}`))) return false;
      found = true;
    }
    return found;
  } catch (error) {
    log(`whether the namespace outlives the dump was not read from CRIU's images: ${error}`);
    return false;
  }
}

/** The TCP connections and listeners a dump took, from its `files.img`; `undefined` when they cannot be read. */
async function dumpedSockets(
  images: string | undefined,
  log: (line: string) => void,
): Promise<DumpedSockets | undefined> {
  if (!images) return undefined;
  try {
    return parseDumpedSockets(await Deno.readFile(`${images}/files.img`));
  } catch (error) {
    log(`the dumped connections were not read from CRIU's images: ${error}`);
    return undefined;
  }
}
