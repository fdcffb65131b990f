/**
 * The CRIU hook's warm helper. `criu-hook.sh` starts it at `pre-dump` or
 * `pre-restore`, before CRIU freezes anything, and talks to it through two
 * FIFOs in a private directory: one request line in `cmd`, one answer line in
 * `reply` (`ok` or `error MESSAGE`). It arms the lock and the unlock ahead
 * (lib/criu/armed.ts), so that inside CRIU's frozen window a lock or an unlock is
 * only a ruleset written to a tool that is already running.
 *
 * Requests: `lock PID` (answered), `arm PID` (restore: arm the unlock of the
 * restored namespace; not answered), `unlock PID` (answered; then the helper
 * removes what is left of the lock and ends), `exit`.
 *
 * It ends on its own: after `unlock`, when CRIU is gone, or after
 * {@linkcode HELPER_LIFETIME_MS}; armed tools that were never fired are
 * killed, so it never applies anything nobody asked for.
 *
 * @module
 */

import {
  type ArmedLock,
  type ArmedUnlock,
  armNetworkLock,
  armNetworkUnlock,
  type KnownLock,
} from "./armed.ts";
import { renderRestoreUnlock, renderTreeRestoreUnlock } from "./hook.ts";
import {
  lockTreeBeforeFreeze,
  lockTreeConnections,
  sharesNetlockNamespace,
  startOf,
  stillRuns,
  type TreeLocked,
  unlockTree,
} from "./tree_lock.ts";
import { requestedBackend } from "../shape/shape.ts";
import { resolveOptions } from "../target/prepare.ts";
import { lockNetwork, unlockNetwork } from "../operations.ts";
import { runCommand } from "../exec/runner.ts";
import { parsePid } from "../common/options.ts";
import type { NetlockOptions, OperationResult } from "../common/types.ts";

/** The longest a helper lives, whatever happens (ms). */
export const HELPER_LIFETIME_MS = 600_000;

/**
 * The restore's unlock in CRIU's image directory: this file says the
 * backend, and `finish` when something is left to remove after the restore;
 * `netlock-unlock.nft` holds the script (see
 * {@linkcode renderRestoreUnlock}). Written after the script, removed
 * before it.
 */
export const RESTORE_PLAN = "netlock-unlock";

/** Where the helper is and what it serves. */
export interface HelperSettings {
  /** The private directory holding the `cmd` and `reply` FIFOs. */
  dir: string;
  /** The lock options (from `NETLOCK_*`). */
  options: NetlockOptions;
  /** The dumped or restored PID, when CRIU already told it. */
  pid?: number;
  /** CRIU's PID: the helper ends when it is gone. */
  criuPid?: number;
  /** A dump: arm the lock of `pid` and answer `ready` (pre-dump waits for it). */
  ready?: boolean;
  /**
   * CRIU's image directory (its real path): after a dump's lock, the helper
   * writes there how to unlock it on restore ({@linkcode RESTORE_PLAN}), so
   * that a restore needs no helper.
   */
  images?: string;
  /** Receives one line per request and per failure (the helper's log). */
  log?: (line: string) => void;
  /** Receives what the user should know but is no failure (e.g. the path a lock took). */
  warn?: (line: string) => void;
}

/**
 * Serves CRIU's network actions until the unlock, CRIU's exit or the
 * lifetime, whichever comes first.
 *
 * @example
 * ```ts ignore
 * import { serveCriuHook } from "./hook_serve.ts";
 *
 * await serveCriuHook({ dir: "/run/netlock/criu-4242", options: {}, pid: 1234 });
 * ```
 *
 * @param settings The FIFOs' directory, the options, the PIDs.
 */
export async function serveCriuHook(settings: HelperSettings): Promise<void> {
  const { dir, options } = settings;
  const log = settings.log ?? (() => {});
  const warn = settings.warn ?? log;
  // Both ends open read-write: opening never blocks, a request written before
  // the helper reads it waits in the pipe, and a hook waiting for an answer
  // sees end-of-file when the helper is gone.
  const cmd = await Deno.open(`${dir}/cmd`, { read: true, write: true });
  const reply = await Deno.open(`${dir}/reply`, { read: true, write: true });
  const stop = new AbortController();
  const lifetime = setTimeout(() => stop.abort(), HELPER_LIFETIME_MS);
  if (settings.criuPid !== undefined) watchCriu(settings.criuPid, stop);

  const answer = async (line: string) => {
    await writeAll(reply, new TextEncoder().encode(`${line.replaceAll("\n", " ")}\n`));
  };
  // What is armed, for which PID; an arm that failed (the target could not
  // be probed yet, say) is redone by the ordinary operation when fired.
  let lock: { pid: number; armed: Promise<ArmedLock | undefined> } | undefined;
  let unlock:
    | { pid: number; known: KnownLock; armed: Promise<ArmedUnlock | undefined> }
    | undefined;
  const armLock = (pid: number) =>
    lock = { pid, armed: armNetworkLock(pid, options).catch(() => undefined) };
  const armUnlock = (pid: number, known: KnownLock) => {
    unlock?.armed.then((armed) => armed?.cancel());
    const armed = armNetworkUnlock(pid, options, known).catch(() => undefined);
    return unlock = { pid, known, armed };
  };
  // The restore's unlock, next to the images; a failure only costs the
  // restore its fast path.
  const planRestore = async (planned: RestorePlanned) => {
    if (!settings.images) return;
    await writeRestorePlan(settings.images, planned).catch((error) =>
      log(`restore plan not written: ${error.message}`)
    );
  };
  // On restore, the lock is the one the dump's images hold.
  const fromImages: KnownLock = {
    backend: requestedBackend(resolveOptions(options)),
    families: ["ipv4", "ipv6"],
  };
  // The dumped tree, to tell when CRIU is gone whether it runs again.
  let dumped: { pid: number; start: string; host: boolean; locked?: TreeLocked } | undefined;
  let unlocked = false;
  let postDumped = false;
  // A dump: arm the lock now, and the unlock of the lock it will make, and
  // plan the restore's unlock; criu-hook.sh waits for this at pre-dump,
  // before CRIU freezes anything, so that inside the window only armed
  // tools are fed. (A restore's lock comes from the images.) A tree that
  // shares CRIU's namespace gets no network-lock: it is locked now.
  if (settings.pid !== undefined && settings.ready) {
    const pid = settings.pid;
    if (settings.images) await removeRestorePlan(settings.images);
    const [start, host] = await Promise.all([startOf(pid), sharesNetlockNamespace(pid, options)]);
    dumped = { pid, start, host };
    if (host) {
      try {
        const locked = dumped.locked = await lockTreeBeforeFreeze(pid, options);
        if (locked.note) warn(locked.note);
        await answer("ready");
      } catch (error) {
        await answer(`error ${(error as Error).message}`);
      }
    } else {
      const planned = (await armLock(pid).armed)?.lock;
      if (planned) await Promise.all([armUnlock(pid, planned).armed, planRestore(planned)]);
      await answer("ready");
    }
  }

  try {
    for await (const line of lines(cmd, stop.signal)) {
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
      if (verb === "post-dump") {
        // The dump succeeded, the tree is still frozen: a tree in CRIU's
        // namespace is locked by connection now, to outlive it.
        if (dumped?.host && dumped.pid === pid) {
          try {
            const result = await lockTreeConnections(pid, options, dumped.locked);
            if (settings.images) {
              const cgroup = dumped.locked?.kind === "cgroup";
              await writeTreePlan(settings.images, result, pid, cgroup, log);
            }
            postDumped = true;
            await answer("ok");
          } catch (error) {
            await answer(`error ${(error as Error).message}`);
          }
        } else {
          postDumped = true;
          await answer("ok");
        }
      } else if (verb === "arm") {
        // setup-namespaces and post-setup-namespaces both say it: arm once.
        if (unlock?.pid !== pid) armUnlock(pid, fromImages);
      } else if (verb === "lock") {
        const armed = await (lock?.pid === pid ? lock : armLock(pid)).armed;
        lock = undefined;
        try {
          const locked = await (armed ? armed.fire() : lockNetwork(pid, options));
          await answer("ok");
          // Not the lock planned at pre-dump (the armed one fell back): arm
          // and plan again, for this very lock, while CRIU dumps.
          if (unlock?.pid !== pid || !sameLock(unlock.known, locked)) {
            armUnlock(pid, locked);
            if (locked.mode === "netns") await planRestore(locked);
          }
        } catch (error) {
          await answer(`error ${(error as Error).message}`);
        }
      } else if (verb === "unlock") {
        const armed = await (unlock?.pid === pid ? unlock : armUnlock(pid, fromImages)).armed;
        unlock = undefined;
        try {
          await (armed ? armed.fire() : unlockNetwork(pid, options));
          unlocked = true;
          await answer("ok");
        } catch (error) {
          await answer(`error ${(error as Error).message}`);
        }
        // CRIU goes on; what is left of the lock goes now, outside its window.
        await armed?.finish().catch((error) => log(`finish: ${error.message}`));
        break;
      } else {
        await answer(`error unknown request: ${verb}`);
      }
    }
  } finally {
    clearTimeout(lifetime);
    stop.abort();
    // CRIU is gone (or the helper's time is up) without an unlock: a tree
    // that runs again (--leave-running of a tree in CRIU's namespace, a
    // failed dump, a CRIU that died) must not stay locked; after a final
    // dump (the tree is gone) the lock stays for the restore.
    if (dumped && !unlocked && await stillRuns(dumped.pid, dumped.start)) {
      await (dumped.host ? unlockTree(dumped.pid, options) : unlockNetwork(dumped.pid, options))
        .catch((error) => log(`unlock after CRIU ended: ${error.message}`));
    } else if (dumped?.host && !postDumped) {
      // Gone without a successful dump (killed before post-dump, say): nothing to keep.
      await unlockTree(dumped.pid, options).catch(() => {});
    }
    // Never fire what nobody asked for: kill armed tools that are still waiting.
    for (const pending of [lock?.armed, unlock?.armed]) await (await pending)?.cancel();
    // New hooks must not find a helper that no longer answers.
    for (const fifo of ["cmd", "reply"]) await Deno.remove(`${dir}/${fifo}`).catch(() => {});
    cmd.close();
    reply.close();
  }
}

/**
 * Writes the restore's unlock of `lock` into `images`: the script first, the
 * plan last, so that a restore never finds half of it (and falls back to
 * the helper or `cli.ts` without one).
 */
async function writeRestorePlan(images: string, lock: RestorePlanned): Promise<void> {
  const { script, finish } = renderRestoreUnlock(lock);
  try {
    await Deno.writeTextFile(`${images}/${RESTORE_PLAN}.nft`, script, { mode: 0o600 });
    const plan = `${lock.backend}${finish ? " finish" : ""}\n`;
    await Deno.writeTextFile(`${images}/${RESTORE_PLAN}`, plan, { mode: 0o600 });
  } catch (error) {
    await removeRestorePlan(images);
    throw error;
  }
}

/**
 * Writes the restore's unlock of a tree that shares CRIU's namespace into
 * `images` (see {@linkcode renderTreeRestoreUnlock}): `host BACKEND PID
 * [finish]`, the script first. `cgroup`: the tree was locked by its cgroup
 * before the freeze, and that lock stands too.
 */
async function writeTreePlan(
  images: string,
  lock: OperationResult,
  pid: number,
  cgroup: boolean,
  log: (line: string) => void,
): Promise<void> {
  const { script, finish } = renderTreeRestoreUnlock({ ...lock, pid, cgroup });
  try {
    await Deno.writeTextFile(`${images}/${RESTORE_PLAN}.nft`, script, { mode: 0o600 });
    const plan = `host ${lock.backend} ${pid}${finish ? " finish" : ""}\n`;
    await Deno.writeTextFile(`${images}/${RESTORE_PLAN}`, plan, { mode: 0o600 });
  } catch (error) {
    log(`restore plan not written: ${(error as Error).message}`);
    await removeRestorePlan(images);
  }
}

/** What a restore's unlock is planned from. */
type RestorePlanned = KnownLock & { name: string; mark: number };

function sameLock(a: KnownLock, b: KnownLock): boolean {
  return a.backend === b.backend && a.families.join() === b.families.join();
}

/** Removes a restore plan (the list first), e.g. one left by an earlier dump. */
async function removeRestorePlan(images: string): Promise<void> {
  for (const suffix of ["", ".nft"]) {
    await Deno.remove(`${images}/${RESTORE_PLAN}${suffix}`).catch(() => {});
  }
}

/** Aborts `stop` when CRIU's process ends (`tail --pid` checks every 20 ms). */
function watchCriu(criuPid: number, stop: AbortController): void {
  runCommand("nsenter", {
    args: ["--", "tail", `--pid=${criuPid}`, "-s", "0.02", "-f", "/dev/null"],
    timeoutMs: 0,
    signal: stop.signal,
  }).then(() => stop.abort(), () => stop.abort());
}

async function* lines(file: Deno.FsFile, signal: AbortSignal): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(4096);
  let pending = "";
  const aborted = new Promise<null>((resolve) => {
    if (signal.aborted) resolve(null);
    signal.addEventListener("abort", () => resolve(null), { once: true });
  });
  while (!signal.aborted) {
    const n = await Promise.race([file.read(buffer), aborted]);
    if (n === null) return;
    pending += decoder.decode(buffer.subarray(0, n), { stream: true });
    let newline: number;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, newline).trim();
      pending = pending.slice(newline + 1);
      if (line) yield line;
    }
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await file.write(bytes.subarray(written));
}
