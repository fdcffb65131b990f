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
 * It ends on its own: after `unlock`, or when CRIU is gone (no timer ends it
 * while CRIU lives: a dump may take as long as it takes); armed tools that
 * were never fired are killed, so it never applies anything nobody asked
 * for. What it leaves after a dump is the one rule of docs/criu.md: the
 * dumped connections stay locked until a restore succeeds; a tree that runs
 * on keeps nothing.
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
import { parseDumpedConnections } from "./dumped_sockets.ts";
import {
  completeTreeLock,
  keptNote,
  lockTreeBeforeFreeze,
  lockTreeConnections,
  narrowToConnections,
  sharesNetlockNamespace,
  startOf,
  stillRuns,
  type TreeLocked,
  unlockKept,
} from "./tree_lock.ts";
import type { Connection } from "../connections/proc_net_parser.ts";
import { requestedBackend } from "../shape/shape.ts";
import { resolveOptions } from "../target/prepare.ts";
import { lockNetwork, unlockNetwork } from "../operations.ts";
import { runCommand } from "../exec/runner.ts";
import { parsePid } from "../common/options.ts";
import type { NetlockOptions, OperationResult } from "../common/types.ts";

/**
 * The longest a helper lives when it does not know CRIU's PID (ms). With
 * CRIU's PID it lives as long as CRIU does, however long that is.
 */
export const HELPER_LIFETIME_MS = 600_000;

/**
 * The restore's unlock in CRIU's image directory: this file (key=value
 * lines, see {@linkcode renderPlanFile}) says the kind of lock, the backend,
 * and `finish=1` when something is left to remove after the restore;
 * `netlock-unlock.nft` holds the script (see
 * {@linkcode renderRestoreUnlock}). Written after the script, removed
 * before it.
 */
export const RESTORE_PLAN = "netlock-unlock";

/**
 * Waits until CRIU (`$1`, started at `$2`) is gone. `tail --pid` checks
 * every 20 ms without a process per check; where tail has no `--pid`
 * (BusyBox's returns at once) the loop does the waiting. The start time
 * keeps a PID that another process took from passing for CRIU.
 */
export const WAIT_GONE_SCRIPT = [
  'alive() { s=; read -r s 2>/dev/null <"/proc/$1/stat" || return 1; set -- ${s##*") "}; shift 19; [ -z "$start" ] || [ "$1" = "$start" ]; }',
  'start=$2; tail --pid="$1" -s 0.02 -f /dev/null 2>/dev/null',
  'while alive "$1"; do sleep 0.05 2>/dev/null || sleep 1; done',
].join("\n");

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
  /** CRIU's start time (field 22 of its stat): a PID reused by another process is not CRIU. */
  criuStart?: string;
  /**
   * A path that holds the dumped tree's network namespace open (the
   * keeper's descriptor): where a namespace lock is narrowed to the dumped
   * connections once a final dump took the tree.
   */
  netnsHandle?: string;
  /** The longest the helper lives without CRIU's PID (default {@linkcode HELPER_LIFETIME_MS}). */
  lifetimeMs?: number;
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
  // No timer ends the helper while CRIU lives: a long dump keeps its lock to
  // the end. A timer that does nothing stays pending all the same: without
  // one, this helper's fired lock took 7-10 ms instead of 2-2.5 ms inside
  // CRIU's window (the armed tool's exit was seen late; measured with
  // bench/criu_hook.ts and CRIU's log, Deno 2.9).
  const lifetime = settings.criuPid === undefined
    ? setTimeout(() => stop.abort(), settings.lifetimeMs ?? HELPER_LIFETIME_MS)
    : setInterval(() => {}, 2 ** 31 - 1);
  if (settings.criuPid !== undefined) watchCriu(settings.criuPid, settings.criuStart, stop);

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
  // The restore's unlock of a namespace lock, next to the images; a failure
  // only costs the restore its fast path (cli.ts finds the lock without it).
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
  // A host tree's cgroup lock goes once its connections are locked by address.
  let narrowed: Promise<void> | undefined;
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
        await answer("ready host");
      } catch (error) {
        await answer(`error ${(error as Error).message}`);
      }
    } else {
      const planned = (await armLock(pid).armed)?.lock;
      if (planned) {
        await Promise.all([armUnlock(pid, planned).armed, planRestore({ ...planned, pid })]);
      }
      await answer("ready netns");
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
            // The lock made before the freeze, completed with what the dump
            // took (CRIU's images are written by now); else made anew.
            const taken = await dumpedConnections(settings.images, log);
            const result = (taken &&
              await completeTreeLock(pid, options, dumped.locked, taken).catch(() => undefined)) ??
              await lockTreeConnections(pid, options, dumped.locked);
            // Without its plan the restore could not unlock the tree: no such dump.
            if (!settings.images) throw new Error("CRIU's image directory is unknown");
            await writeTreePlan(settings.images, result, pid);
            postDumped = true;
            await answer("ok");
            warn(keptNote(pid, result));
          } catch (error) {
            await answer(
              `error criu-hook: cannot keep process ${pid} locked for its restore: ` +
                (error as Error).message,
            );
          }
          // The dumped connections are locked by address: the cgroup lock
          // (which would cut off a fallback started in that cgroup) goes.
          if (postDumped && dumped.locked?.kind === "cgroup") {
            narrowed = unlockKept(pid, options, ["cgroup"]).then(
              () => {},
              (error) => log(`the cgroup lock of process ${pid} stays: ${error.message}`),
            );
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
            if (locked.mode === "netns") await planRestore({ ...locked, pid });
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
    await narrowed;
    // CRIU is gone without an unlock. A tree that runs again
    // (--leave-running of a tree in CRIU's namespace, a failed dump, a CRIU
    // that died) keeps nothing; after a final dump (the tree is gone) the
    // dumped connections stay locked for the restore, and nothing more.
    if (dumped && !unlocked) {
      await afterCriu(dumped, postDumped, options, log, {
        netns: settings.netnsHandle,
        // What the dump took, from its images (read after CRIU, not in its window).
        connections: () => dumpedConnections(settings.images, log),
      });
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
 * What stays of a dump's lock once CRIU is gone without an unlock (the one
 * rule of docs/criu.md): a tree that runs again keeps nothing; a tree gone
 * after its dump keeps its dumped connections, locked by address (no
 * cgroup lock; a namespace lock narrowed to them); gone without a
 * successful dump, nothing. Exactly the
 * locks the dump made, by name and kind, in netlock's own namespace for a
 * host tree (never whatever namespace its PID may be in by now).
 */
async function afterCriu(
  dumped: { pid: number; start: string; host: boolean },
  postDumped: boolean,
  options: NetlockOptions,
  log: (line: string) => void,
  namespace: { netns?: string; connections: () => Promise<Connection[] | undefined> },
): Promise<void> {
  const runs = await stillRuns(dumped.pid, dumped.start);
  const failed = (error: Error) => log(`unlock after CRIU ended: ${error.message}`);
  if (!dumped.host) {
    if (runs) await unlockNetwork(dumped.pid, options).catch(failed);
    // A final dump: the namespace lock narrows to the dumped connections
    // (unread ones: the whole lock stays, the safe side).
    else if (postDumped && namespace.netns) {
      const connections = await namespace.connections();
      if (connections) {
        await narrowToConnections(namespace.netns, dumped.pid, connections, options)
          .catch((error) => log(`the namespace lock stays whole: ${error.message}`));
      }
    }
    return;
  }
  const kinds = runs || !postDumped ? ["connections", "cgroup"] as const : ["cgroup"] as const;
  await unlockKept(dumped.pid, options, [...kinds]).catch(failed);
}

/** The TCP connections a dump took, from its `files.img`; `undefined` when they cannot be read. */
async function dumpedConnections(
  images: string | undefined,
  log: (line: string) => void,
): Promise<Connection[] | undefined> {
  if (!images) return undefined;
  try {
    return parseDumpedConnections(await Deno.readFile(`${images}/files.img`));
  } catch (error) {
    log(`the dumped connections were not read from CRIU's images: ${error}`);
    return undefined;
  }
}

/**
 * The plan file: version 1, key=value lines (`kind`, `backend`, `pid`: the
 * dumped root, whose PID a restore in a PID namespace of its own changes,
 * `finish`), which criu-hook.sh reads by key.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderPlanFile } from "./hook_serve.ts";
 *
 * assert.equal(
 *   renderPlanFile({ kind: "host", backend: "nftables", pid: 42, finish: true }),
 *   "version=1\nkind=host\nbackend=nftables\npid=42\nfinish=1\n",
 * );
 * ```
 *
 * @param plan What the restore's unlock is.
 * @returns The file's text.
 */
export function renderPlanFile(
  plan: { kind: "netns" | "host"; backend: string; pid?: number; finish: boolean },
): string {
  return `version=1\nkind=${plan.kind}\nbackend=${plan.backend}\n` +
    (plan.pid !== undefined ? `pid=${plan.pid}\n` : "") + `finish=${plan.finish ? 1 : 0}\n`;
}

/**
 * Writes a restore plan into `images`: the script first, the plan last, so
 * that a restore never finds half of it (and falls back to the helper or
 * `cli.ts` without one). Throws when it cannot (what was written is removed).
 */
async function writePlan(images: string, script: string, plan: string): Promise<void> {
  try {
    await Deno.writeTextFile(`${images}/${RESTORE_PLAN}.nft`, script, { mode: 0o600 });
    await Deno.writeTextFile(`${images}/${RESTORE_PLAN}`, plan, { mode: 0o600 });
  } catch (error) {
    await removeRestorePlan(images);
    throw error;
  }
}

/** Writes the restore's unlock of the namespace lock `lock` into `images`. */
async function writeRestorePlan(images: string, lock: RestorePlanned): Promise<void> {
  const { script, finish } = renderRestoreUnlock(lock);
  await writePlan(
    images,
    script,
    renderPlanFile({ kind: "netns", backend: lock.backend, pid: lock.pid, finish }),
  );
}

/**
 * Writes the restore's unlock of a tree that shares CRIU's namespace into
 * `images` (see {@linkcode renderTreeRestoreUnlock}): it opens the lock of
 * the dumped connections (the cgroup lock is gone by then).
 */
async function writeTreePlan(images: string, lock: OperationResult, pid: number): Promise<void> {
  const { script, finish } = renderTreeRestoreUnlock({ ...lock, pid });
  await writePlan(
    images,
    script,
    renderPlanFile({ kind: "host", backend: lock.backend, pid, finish }),
  );
}

/** What a restore's unlock is planned from: the lock, and the dumped PID. */
type RestorePlanned = KnownLock & { name: string; mark: number; pid: number };

function sameLock(a: KnownLock, b: KnownLock): boolean {
  return a.backend === b.backend && a.families.join() === b.families.join();
}

/** Removes a restore plan (the list first), e.g. one left by an earlier dump. */
async function removeRestorePlan(images: string): Promise<void> {
  for (const suffix of ["", ".nft"]) {
    await Deno.remove(`${images}/${RESTORE_PLAN}${suffix}`).catch(() => {});
  }
}

/** Aborts `stop` when CRIU's process ends (see {@linkcode WAIT_GONE_SCRIPT}). */
function watchCriu(criuPid: number, criuStart: string | undefined, stop: AbortController): void {
  runCommand("nsenter", {
    args: ["--", "sh", "-c", WAIT_GONE_SCRIPT, "netlock-wait", String(criuPid), criuStart ?? ""],
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
