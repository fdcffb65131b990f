/**
 * The helper's unlock session: an unlock armed ahead and fired on
 * `unlock PID` (CRIU's network-unlock). A restore arms it on `arm PID`
 * (setup-namespaces), for the lock the dump's images hold; a dump arms it
 * at `pre-dump` for the lock it will make, so that the `network-unlock` of
 * a `--leave-running` or failed dump is as fast as a restore's.
 *
 * @module
 */

import { type ArmedUnlock, armNetworkUnlock, type KnownLock } from "../armed.ts";
import { requestedBackend } from "../../shape/shape.ts";
import { resolveOptions } from "../../netns/prepare.ts";
import { unlockNetwork } from "../../operations.ts";
import type { NetlockOptions } from "../../common/types.ts";
import type { Holder } from "../../hold/holder.ts";

/** The unlock of one helper: what is armed, for which PID and lock. */
export class UnlockSession {
  #options: NetlockOptions;
  #log: (line: string) => void;
  #note: (line: string) => void;
  /** On restore, the lock is the one the dump's images hold. */
  #fromImages: KnownLock;
  #armed?: { pid: number; known: KnownLock; armed: Promise<ArmedUnlock | undefined> };
  /** What the dump's lock holds, let through once the lock opens. */
  #holder?: Holder;

  /**
   * @param options The hook's options.
   * @param log The helper's log (failures).
   * @param note Where what went as it should is told (how many held packets went through).
   */
  constructor(
    options: NetlockOptions,
    log: (line: string) => void,
    note: (line: string) => void = log,
  ) {
    this.#options = options;
    this.#log = log;
    this.#note = note;
    this.#fromImages = {
      backend: requestedBackend(resolveOptions(options)),
      families: ["ipv4", "ipv6"],
    };
  }

  /**
   * Arms the unlock of `known` for `pid` (the one armed before is
   * cancelled). An arm that fails (the target could not be probed yet, say)
   * is redone by the ordinary unlock when fired.
   */
  arm(pid: number, known: KnownLock): Promise<ArmedUnlock | undefined> {
    this.#armed?.armed.then((armed) => armed?.cancel());
    const armed = armNetworkUnlock(pid, this.#options, known).catch(() => undefined);
    this.#armed = { pid, known, armed };
    return armed;
  }

  /** `arm PID`: the restore's unlock of the lock in the images (setup-namespaces and post-setup-namespaces both say it: armed once). */
  armFromImages(pid: number): void {
    if (this.#armed?.pid !== pid) this.arm(pid, this.#fromImages);
  }

  /** The holder of the dump's lock: the unlock lets what it holds through once the lock opens. */
  hold(holder: Holder): void {
    this.#holder = holder;
  }

  /** The holder of the dump's lock, taken away (no unlock or cancel lets it through or closes it then). */
  takeHolder(): Holder | undefined {
    const holder = this.#holder;
    this.#holder = undefined;
    return holder;
  }

  /** Whether the unlock armed for `pid` is that of a lock like `lock` (same backend and families). */
  armedFor(pid: number, lock: KnownLock): boolean {
    const armed = this.#armed;
    return armed?.pid === pid && armed.known.backend === lock.backend &&
      armed.known.families.join() === lock.families.join();
  }

  /**
   * `unlock PID`: fires the armed unlock (armed now if it was not), or
   * unlocks the ordinary way; answers; then removes what is left of the
   * lock (CRIU goes on: outside its window).
   *
   * @returns Whether the unlock succeeded.
   */
  async unlock(pid: number, answer: (line: string) => Promise<void>): Promise<boolean> {
    const armed =
      await (this.#armed?.pid === pid ? this.#armed.armed : this.arm(pid, this.#fromImages));
    this.#armed = undefined;
    let unlocked = false;
    try {
      await (armed ? armed.fire() : unlockNetwork(pid, this.#options));
      unlocked = true;
      await answer("ok");
    } catch (error) {
      await answer(`error ${(error as Error).message}`);
    }
    // Opened (nothing new is queued): what was held goes on, all at once;
    // not opened: the holder closes and the kernel drops it.
    const holder = this.#holder;
    this.#holder = undefined;
    if (holder && unlocked) {
      await holder.release().then(
        (released) => this.#note(`let through ${released} held packet(s)`),
        (error) => this.#log(`held packets dropped: ${error.message}`),
      );
    }
    await holder?.close();
    await armed?.finish().catch((error) => this.#log(`finish: ${error.message}`));
    return unlocked;
  }

  /** Never fires what nobody asked for: kills an armed tool that is still waiting. */
  async cancel(): Promise<void> {
    await (await this.#armed?.armed)?.cancel();
    // A holder never released: the kernel drops what it holds (fail closed).
    await this.#holder?.close();
    this.#holder = undefined;
  }
}
