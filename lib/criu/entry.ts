/**
 * netlock as CRIU's action script: the plain hook (`cli.ts` run with no
 * arguments while `CRTOOLS_SCRIPT_ACTION` is set, or `netlock criu-hook`)
 * and the warm helper `criu-hook.sh` starts. Loaded only for them.
 *
 * @module
 */

import { HOOK_ENV, hookOptions, planCriuHook } from "./hook.ts";
import { NetlockError } from "../common/errors.ts";
import { parsePid } from "../common/options.ts";
import { lockNetwork, unlockNetwork } from "../operations.ts";
import type { NetlockOptions } from "../common/types.ts";
import { EXIT, printError, printWarning, readEnv } from "../common/output.ts";

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
  let plan;
  try {
    plan = planCriuHook((name) => Deno.env.get(name));
  } catch (error) {
    printError(errorMessage(error));
    return isUsageError(error) ? EXIT.usage : EXIT.failed;
  }
  if (plan.action === "none") return EXIT.ok;
  if (plan.action === "refuse-host-tree") return await refuseHostTree(plan.pid, plan.options);
  try {
    const result = plan.action === "lock"
      ? await lockNetwork(plan.pid, plan.options)
      : await unlockNetwork(plan.pid, plan.options);
    for (const warning of result.warnings ?? []) printWarning(warning);
    // criu-hook.sh says which PID the tree had when it was dumped: a tree
    // restored in a PID namespace of its own (a container) has a new PID
    // outside it, and the locks kept since the dump bear the old one.
    const dumped = Number(readEnv("NETLOCK_DUMPED_PID") ?? "");
    if (
      plan.action === "unlock" && Number.isSafeInteger(dumped) && dumped > 0 && dumped !== plan.pid
    ) {
      const { unlockKept } = await import("./tree_lock.ts");
      await unlockKept(dumped, plan.options, ["connections", "cgroup"], plan.pid);
    }
    return EXIT.ok;
  } catch (error) {
    printError(errorMessage(error));
    return isUsageError(error) ? EXIT.usage : EXIT.failed;
  }
}

/**
 * `pre-dump` without the warm helper: CRIU sends a tree in its own namespace
 * no network action, so only the helper can keep it locked until the
 * restore, and unlock it if it runs again; without it the dump is refused.
 */
async function refuseHostTree(pid: number, options: NetlockOptions): Promise<number> {
  const { sharesNetlockNamespace } = await import("./tree_probe.ts");
  try {
    if (!await sharesNetlockNamespace(pid, options)) return EXIT.ok;
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
 * The warm helper (`cli.ts criu-hook --serve DIR CRIU_PID [--criu-start=TICKS]
 * [--ready] [--images=DIR]`). `NETLOCK_HELPER_LIFETIME_MS` bounds a helper
 * that is not given CRIU's PID (tests shorten it).
 *
 * @param args The arguments after `--serve`.
 * @returns The exit code.
 */
export async function criuHelper(args: string[]): Promise<number> {
  const [dir, criuPid, ...flags] = args;
  const flag = (name: string) =>
    flags.find((flag) => flag.startsWith(`--${name}=`))?.slice(name.length + 3);
  const images = flag("images");
  const lifetime = Number(readEnv("NETLOCK_HELPER_LIFETIME_MS") ?? "");
  const { serveCriuHook } = await import("./helper/serve.ts");
  try {
    const pidText = readEnv("CRTOOLS_INIT_PID");
    await serveCriuHook({
      dir,
      options: hookOptions((name) => readEnv(name)),
      pid: pidText ? Number(pidText) : undefined,
      criuPid: criuPid ? Number(criuPid) : undefined,
      criuStart: flag("criu-start") || undefined,
      lifetimeMs: lifetime > 0 ? lifetime : undefined,
      ready: flags.includes("--ready"),
      images: images || undefined,
      log: (line) => line.startsWith("request:") ? undefined : printError(`criu-hook: ${line}`),
      warn: (line) => printWarning(`criu-hook: ${line}`),
    });
    return EXIT.ok;
  } catch (error) {
    printError(`criu-hook helper: ${errorMessage(error)}`);
    return isUsageError(error) ? EXIT.usage : EXIT.failed;
  }
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
export async function criuNarrow(args: string[]): Promise<number> {
  const [pidText = "", images, netns, ...rest] = args;
  if (!images || !netns || rest.length > 0) {
    printError("criu-hook --narrow takes the dumped PID, the image directory and the namespace");
    return EXIT.usage;
  }
  try {
    const pid = parsePid(pidText);
    const { parseDumpedSockets } = await import("./dumped_sockets.ts");
    const { narrowToDumped } = await import("./narrow.ts");
    const taken = parseDumpedSockets(await Deno.readFile(`${images}/files.img`));
    await narrowToDumped(netns, pid, taken, hookOptions((name) => readEnv(name)));
    return EXIT.ok;
  } catch (error) {
    printError(`criu-hook: the namespace lock stays whole: ${errorMessage(error)}`);
    return isUsageError(error) ? EXIT.usage : EXIT.failed;
  }
}

function isUsageError(error: unknown): boolean {
  return error instanceof TypeError || error instanceof RangeError ||
    (error instanceof NetlockError && error.code === "DENO_PERMISSION");
}

function errorMessage(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).replace(/\s*\n\s*/g, " ").trim();
}
