/**
 * netlock's entry points for CRIU: the plain hook (`cli.ts` run with no
 * arguments while `CRTOOLS_SCRIPT_ACTION` is set, or `netlock criu-hook`)
 * and the internal ones criu-hook.sh runs (`cli.ts criu-hook --WORD ...`:
 * {@linkcode internalEntry}), each named for what it does.
 *
 * @module
 */

import { HOOK_ENV, hookOptions, plainHookTask } from "./environment.ts";
import { NetlockError } from "../common/errors.ts";
import { parsePid } from "../common/options.ts";
import { lockNetwork, unlockNetwork } from "../operations.ts";
import type { NetlockOptions } from "../common/types.ts";
import { EXIT, printError, printWarning, readEnv, writeSync } from "../common/output.ts";
import { parseDumpedSockets } from "./dumped_sockets.ts";
import { serveCriuHook } from "./helper/serve.ts";
import { lockImages } from "./images.ts";
import { narrowToDumped } from "./narrow.ts";
import { unlockKept } from "./tree_lock.ts";
import { identifyTree } from "./tree_probe.ts";

/**
 * The plain hook: locks on `network-lock`, unlocks on `network-unlock`,
 * refuses a tree in CRIU's namespace at `pre-dump` (no helper), exits 0
 * silently on every other action.
 *
 * @returns The exit code.
 */
export async function criuHook(): Promise<number> {
  const denied = HOOK_ENV.filter((name) =>
    Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted"
  );
  if (denied.length > 0) {
    printError(`the CRIU hook reads its environment: add --allow-env=${HOOK_ENV.join(",")}`);
    return EXIT.usage;
  }
  let task;
  try {
    task = plainHookTask((name) => Deno.env.get(name));
  } catch (error) {
    return failedWith(error);
  }
  if (task.task === "none") return EXIT.ok;
  if (task.task === "refuse-host-tree") return await refuseHostTree(task.pid, task.options);
  try {
    const result = task.task === "lock"
      ? await lockNetwork(task.pid, task.options)
      : await unlockNetwork(task.pid, task.options);
    for (const warning of result.warnings ?? []) printWarning(warning);
    return EXIT.ok;
  } catch (error) {
    return failedWith(error);
  }
}

/**
 * The internal entry point `cli.ts criu-hook WORD ...` names, or
 * `undefined` for another word (then `criu-hook` is the user's command):
 * `--serve` (the warm helper), `--unlock-restored`, `--unlock-kept`,
 * `--narrow`. Each takes its input as arguments and the lock options from
 * `NETLOCK_*`; none reads CRIU's variables.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { internalEntry } from "./entry.ts";
 *
 * assert.equal(typeof internalEntry("--unlock-kept"), "function");
 * assert.equal(internalEntry("--help"), undefined);
 * ```
 *
 * @param word The argument after `criu-hook`.
 * @returns The entry point (it takes the arguments after the word and returns the exit code).
 */
export function internalEntry(
  word: string | undefined,
): ((args: string[]) => Promise<number>) | undefined {
  switch (word) {
    case "--serve":
      return criuHelper;
    case "--unlock-restored":
      return unlockRestored;
    case "--unlock-kept":
      return unlockDumpedTree;
    case "--narrow":
      return criuNarrow;
    case "--lock-migrated":
      return lockMigrated;
  }
  return undefined;
}

/**
 * `pre-dump` without the warm helper: CRIU sends a tree in its own namespace
 * no network action, so only the helper can keep it locked until the
 * restore, and unlock it if it runs again; without it the dump is refused.
 */
async function refuseHostTree(pid: number, options: NetlockOptions): Promise<number> {
  try {
    if ((await identifyTree(pid, options)).place === "netns") return EXIT.ok;
  } catch (error) {
    printError(errorMessage(error));
    return EXIT.failed;
  }
  printError(
    `criu-hook: process ${pid} shares CRIU's network namespace: only criu-hook.sh's warm ` +
      "helper can keep its connections locked until the restore (and unlock them if it runs " +
      "again), and it could not start; refusing the dump",
  );
  return EXIT.failed;
}

/**
 * The warm helper: `criu-hook --serve DIR CRIU_PID CRIU_START dump PID
 * [IMAGES]` (a dump's, started at `pre-dump`: it locks the tree or arms its
 * lock and answers `ready PLACE`; IMAGES: CRIU's image directory, where
 * the restore's plan goes) or `criu-hook --serve DIR CRIU_PID CRIU_START
 * restore` (a restore's, started at `pre-restore`). It ends when CRIU
 * (that PID, started at that time) is gone (or, holding a host tree after
 * its final dump, when its restore released it or `NETLOCK_HOLD_KEEP_MS`
 * is up). `NETLOCK_HELPER_LIFETIME_MS` bounds a helper that is not given
 * CRIU's PID (tests shorten it).
 */
async function criuHelper(args: string[]): Promise<number> {
  const [dir = "", criuPid = "", criuStart = "", role = "", dumpPid = "", images = "", ...rest] =
    args;
  const lifetime = Number(readEnv("NETLOCK_HELPER_LIFETIME_MS") ?? "");
  const kept = Number(readEnv("NETLOCK_HOLD_KEEP_MS") ?? "");
  try {
    if (!dir || !["dump", "restore"].includes(role) || rest.length > 0) {
      throw new TypeError(
        "criu-hook --serve takes DIR CRIU_PID CRIU_START, then dump PID [IMAGES] or restore",
      );
    }
    await serveCriuHook({
      dir,
      options: hookOptions((name) => readEnv(name)),
      criuPid: criuPid ? parsePid(criuPid) : undefined,
      criuStart: criuStart || undefined,
      lifetimeMs: lifetime > 0 ? lifetime : undefined,
      dumpPid: role === "dump" ? parsePid(dumpPid) : undefined,
      images: images || undefined,
      hold: readEnv("NETLOCK_HOLD") === "1",
      keptHoldMs: kept > 0 ? kept : undefined,
      log: (line) => line.startsWith("request:") ? undefined : printError(`criu-hook: ${line}`),
      warn: (line) => printWarning(`criu-hook: ${line}`),
      note: (line) => writeSync(Deno.stderr, `criu-hook: ${line}\n`),
    });
    return EXIT.ok;
  } catch (error) {
    return failedWith(error, "criu-hook helper: ");
  }
}

/**
 * A restore's unlock without the helper (its plan's script failed, or it
 * left work for `post-resume`): `criu-hook --unlock-restored PID DUMPED`
 * unlocks the restored tree `PID` as CRIU's network-unlock would, then
 * what the dump kept under the PID it was dumped with (`NAME-cDUMPED`,
 * `NAME-gDUMPED` in the restored tree's namespace): a tree restored in a
 * PID namespace of its own (a container) has a new PID outside it.
 */
async function unlockRestored(args: string[]): Promise<number> {
  const [restoredText = "", dumpedText = "", ...rest] = args;
  try {
    if (rest.length > 0) throw new TypeError("criu-hook --unlock-restored takes PID DUMPED_PID");
    const restored = parsePid(restoredText);
    const dumped = parsePid(dumpedText);
    const options = hookOptions((name) => readEnv(name));
    const result = await unlockNetwork(restored, options);
    for (const warning of result.warnings ?? []) printWarning(warning);
    if (dumped !== restored) {
      await unlockKept(dumped, options, ["connections", "cgroup"], restored);
    }
    return EXIT.ok;
  } catch (error) {
    return failedWith(error);
  }
}

/**
 * What a dump of a tree in CRIU's namespace kept, removed once its restore
 * opened it and CRIU died before `post-resume` (the restore's watcher):
 * `criu-hook --unlock-kept DUMPED` removes `NAME-cDUMPED` and
 * `NAME-gDUMPED` in netlock's own namespace.
 */
async function unlockDumpedTree(args: string[]): Promise<number> {
  const [dumpedText = "", ...rest] = args;
  try {
    if (rest.length > 0) throw new TypeError("criu-hook --unlock-kept takes DUMPED_PID");
    const dumped = parsePid(dumpedText);
    await unlockKept(dumped, hookOptions((name) => readEnv(name)), ["connections", "cgroup"]);
    return EXIT.ok;
  } catch (error) {
    return failedWith(error);
  }
}

/**
 * `pre-restore` of a tree on the host's network whose images were dumped
 * elsewhere (lib/criu/hook/actions.sh `lock_migrated`): what the dump took
 * is locked in this namespace under the dumped PID, as `netlock lock
 * --images` does, before CRIU restores the sockets, which the restore's
 * unlock then removes. Already locked (`lock --images` ran): nothing to
 * say. Locked now: CRIU's log says that what reached this host before was
 * not protected. A failure is reported there too and never fails the
 * restore (`criu-hook --lock-migrated IMAGES DUMPED`).
 */
async function lockMigrated(args: string[]): Promise<number> {
  const [images = "", dumpedText = "", ...rest] = args;
  try {
    if (!images || rest.length > 0) {
      throw new TypeError("criu-hook --lock-migrated takes IMAGES DUMPED_PID");
    }
    const dumped = parsePid(dumpedText);
    const result = await lockImages(images, undefined, hookOptions((name) => readEnv(name)));
    if (result.dumped !== dumped) {
      printWarning(
        `criu-hook: the images' root is ${result.dumped}, the restore plan's ${dumped}: ` +
          `locked its connections under ${result.dumped}`,
      );
    }
    if (result.changed) {
      printWarning(
        `criu-hook: the dump ran elsewhere (another host or namespace): nothing here kept its ` +
          `${result.connections} ` +
          "connection(s) locked until now (netlock lock --images DIR, before the service's " +
          "address moves, does): what its peers sent before this restore was answered with " +
          "resets; locked now until the restore has the tree",
      );
    }
  } catch (error) {
    printWarning(`criu-hook: could not lock what the dump took here: ${errorMessage(error)}`);
  }
  return EXIT.ok;
}

/**
 * After a restore that failed (the restore's watcher, once CRIU is gone):
 * the namespace lock the dump left narrows to what the dump took, its TCP
 * connections and listeners as CRIU's images hold them, locked under the
 * dumped PID's name (`NAME-cPID`), so that a namespace that outlives the
 * tree (a pod's) lets its other processes talk while the dumped
 * connections wait, unanswered, for a retry
 * (`cli.ts criu-hook --narrow PID IMAGES NETNS`).
 *
 * @param args The arguments after `--narrow`: the dumped PID, the image
 *   directory, a path that holds the namespace.
 * @returns The exit code.
 */
async function criuNarrow(args: string[]): Promise<number> {
  const [pidText = "", images, netns, ...rest] = args;
  if (!images || !netns || rest.length > 0) {
    printError("criu-hook --narrow takes the dumped PID, the image directory and the namespace");
    return EXIT.usage;
  }
  try {
    const pid = parsePid(pidText);
    const taken = parseDumpedSockets(await Deno.readFile(`${images}/files.img`));
    await narrowToDumped(netns, pid, taken, hookOptions((name) => readEnv(name)));
    return EXIT.ok;
  } catch (error) {
    return failedWith(error, "criu-hook: the namespace lock stays whole: ");
  }
}

/** Prints the error in one line (after `prefix`) and returns its exit code: 2 for misuse, else 1. */
function failedWith(error: unknown, prefix = ""): number {
  printError(`${prefix}${errorMessage(error)}`);
  return isUsageError(error) ? EXIT.usage : EXIT.failed;
}

function isUsageError(error: unknown): boolean {
  return error instanceof TypeError || error instanceof RangeError ||
    (error instanceof NetlockError && error.code === "DENO_PERMISSION");
}

function errorMessage(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).replace(/\s*\n\s*/g, " ").trim();
}
