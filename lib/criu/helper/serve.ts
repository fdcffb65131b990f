/**
 * The CRIU hook's warm helper. `criu-hook.sh` starts it at `pre-dump` or
 * `pre-restore`, before CRIU freezes anything, and talks to it through two
 * FIFOs in a private directory (./channel.ts). It arms the lock and the
 * unlock ahead (lib/criu/armed.ts), so that inside CRIU's frozen window a
 * lock or an unlock is only a ruleset written to a tool that is already
 * running: the dump's requests go to ./dump_session.ts, the unlock's (a
 * restore's, or a dump's network-unlock) to ./unlock_session.ts, and the
 * restore's plan is written by lib/criu/plan.ts.
 *
 * Requests: `lock PID` (answered), `post-dump PID` (answered), `arm PID`
 * (restore: arm the unlock of the restored namespace; not answered),
 * `unlock PID` (answered; then the helper removes what is left of the lock
 * and ends), `exit`.
 *
 * It ends on its own: after `unlock`, or when CRIU is gone (no timer ends it
 * while CRIU lives: a dump may take as long as it takes); armed tools that
 * were never fired are killed, so it never applies anything nobody asked
 * for. What it leaves after a dump is the one rule of docs/criu.md: the
 * dumped connections stay locked until a restore succeeds; a tree that runs
 * on keeps nothing.
 *
 * @module
 */

import { openChannel, watchCriu } from "./channel.ts";
import { DumpSession } from "./dump_session.ts";
import { UnlockSession } from "./unlock_session.ts";
import { parsePid } from "../../common/options.ts";
import type { NetlockOptions } from "../../common/types.ts";

/**
 * The longest a helper lives when it does not know CRIU's PID (ms). With
 * CRIU's PID it lives as long as CRIU does, however long that is.
 */
export const HELPER_LIFETIME_MS = 600_000;

/** Where the helper is and what it serves. */
export interface HelperSettings {
  /** The private directory holding the `cmd` and `reply` FIFOs. */
  dir: string;
  /** The lock options (from `NETLOCK_*`). */
  options: NetlockOptions;
  /** CRIU's PID: the helper ends when it is gone. */
  criuPid?: number;
  /** CRIU's start time (field 22 of its stat): a PID reused by another process is not CRIU. */
  criuStart?: string;
  /** The longest the helper lives without CRIU's PID (default {@linkcode HELPER_LIFETIME_MS}). */
  lifetimeMs?: number;
  /**
   * A dump's tree (`CRTOOLS_INIT_PID` at `pre-dump`): the helper locks it
   * or arms its lock, then answers `ready PLACE` (pre-dump waits for it).
   * Without it, a restore's helper: it waits for `arm PID`.
   */
  dumpPid?: number;
  /**
   * CRIU's image directory (its real path): after a dump's lock, the helper
   * writes there how to unlock it on restore (`RESTORE_PLAN`, lib/criu/plan.ts), so
   * that a restore needs no helper.
   */
  images?: string;
  /** Hold what the lock stops until the tree can answer (`NETLOCK_HOLD=1`). */
  hold?: boolean;
  /** How long a helper keeps holding after a final dump, for the restore (default `KEPT_HOLD_MS`). */
  keptHoldMs?: number;
  /** Receives one line per request and per failure (the helper's log). */
  log?: (line: string) => void;
  /** Receives what the user should know but is no failure (e.g. the path a lock took). */
  warn?: (line: string) => void;
  /** Receives what went as it should (how many held packets went through). */
  note?: (line: string) => void;
}

/**
 * Serves CRIU's network actions until the unlock, CRIU's exit or the
 * lifetime, whichever comes first.
 *
 * @example
 * ```ts
 * import { serveCriuHook } from "./serve.ts";
 *
 * // Needs root and a live target: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   await serveCriuHook({ dir: "/run/netlock/criu-4242", options: {}, dumpPid: 1234 });
 * }
 * ```
 *
 * @param settings The FIFOs' directory, the options, the PIDs.
 */
export async function serveCriuHook(settings: HelperSettings): Promise<void> {
  const { dir, options } = settings;
  const log = settings.log ?? (() => {});
  const warn = settings.warn ?? log;
  const channel = await openChannel(dir);
  const stop = new AbortController();
  // No timer ends the helper while CRIU lives: a long dump keeps its lock to
  // the end. A timer that does nothing stays pending all the same: without
  // one, this helper's fired lock took 7-10 ms instead of 2-2.5 ms inside
  // CRIU's window (the armed tool's exit was seen late; measured with
  // bench/criu_hook.ts and CRIU's log, Deno 2.9).
  const lifetime = settings.criuPid === undefined
    ? setTimeout(() => stop.abort(), settings.lifetimeMs ?? HELPER_LIFETIME_MS)
    : setInterval(() => {}, 2 ** 31 - 1);
  if (settings.criuPid !== undefined) watchCriu(settings.criuPid, settings.criuStart, stop);

  const answer = (line: string) => channel.answer(line);
  const note = settings.note ?? log;
  const unlocks = new UnlockSession(options, log, note);
  const dump = new DumpSession(
    { options, images: settings.images, dir, log, warn, note, hold: settings.hold },
    unlocks,
  );
  // A dump: pre-dump waits for this answer, before CRIU freezes anything.
  if (settings.dumpPid !== undefined) await answer(await dump.preDump(settings.dumpPid));

  let unlocked = false;
  try {
    for await (const line of channel.requests(stop.signal)) {
      const [verb, pidText] = line.split(" ");
      log(`request: ${line}`);
      if (verb === "exit") break;
      let pid: number;
      try {
        pid = parsePid(pidText ?? "");
      } catch (error) {
        if (verb !== "arm") await answer(`error ${(error as Error).message}`);
        continue;
      }
      // Each request is one CRIU action (docs/criu.md, "The actions").
      if (verb === "lock") await dump.lock(pid, answer); // network-lock
      else if (verb === "post-dump") await dump.postDump(pid, answer); // post-dump
      else if (verb === "arm") unlocks.armFromImages(pid); // setup-namespaces, post-setup-namespaces
      else if (verb === "unlock") { // network-unlock
        unlocked = await unlocks.unlock(pid, answer);
        break;
      } else await answer(`error unknown request: ${verb}`);
    }
  } finally {
    clearTimeout(lifetime);
    stop.abort();
    const kept = await dump.end(unlocked);
    await unlocks.cancel();
    // A final dump of a held tree whose lock outlives it: held for its restore, a while.
    if (kept) await kept.keep(channel, settings.keptHoldMs);
    // New hooks must not find a helper that no longer answers.
    await channel.close();
  }
}
