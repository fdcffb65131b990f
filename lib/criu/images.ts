/**
 * Locks made from a CRIU dump's images, for live migration: on the host a
 * tree moves to, exactly what the dump took (its TCP connections and
 * listeners, `files.img`) is locked under the dumped root's PID
 * (`pstree.img`) before the service's address arrives, so that the peers'
 * segments are dropped, not answered with a reset, until the restore has
 * the sockets back; the restore's hook removes that lock (it is the lock
 * a dump on this host would have kept). On the host the tree left, the
 * same name is what the dump kept: removing it is the last step.
 *
 * The images are read through `nsenter -- base64` (netlock's own
 * namespaces): the CLI's one permission, `--allow-run=nsenter`, suffices.
 *
 * @module
 */

import { NetlockError } from "../common/errors.ts";
import { OWN_NAMESPACE } from "../common/options.ts";
import { nsenterExec } from "../exec/nsenter.ts";
import { describeFailure, firstLine } from "../exec/runner.ts";
import { parseDumpedRoot, parseDumpedSockets } from "./dumped_sockets.ts";
import type { Connection, Listener } from "../connections/proc_net_parser.ts";
import { familiesOf, inContext, prepare, resolveOptions } from "../netns/prepare.ts";
import { toTargetRef } from "../netns/target.ts";
import { connectionShape } from "../shape/connections.ts";
import { cgroupShape } from "../shape/cgroup.ts";
import { lockWithBackend } from "../lock/apply.ts";
import { unlockAllBackends } from "../unlock/backends.ts";
import type { ExecSettings } from "../exec/nsenter.ts";
import type { NamespaceOutcome } from "../shape/shape.ts";
import type { NetlockOptions, OperationResult, Target, UnlockResult } from "../common/types.ts";

/** What a dump's images say it took. */
export interface DumpImages {
  /** The dumped tree's root, as the dump saw it: the lock is `NAME-cPID`. */
  pid: number;
  /** Its TCP connections. */
  connections: Connection[];
  /** Its TCP listeners. */
  listeners: Listener[];
}

/** A lock or unlock of what a dump took: the dumped root's PID beside the report. */
export interface ImagesResult extends OperationResult {
  /** The dumped tree's root (the lock's name is `NAME-cPID`). */
  dumped: number;
}

/**
 * Reads what a dump took from its image directory (`pstree.img`,
 * `files.img`).
 *
 * @example
 * ```ts
 * import { readDumpImages } from "./images.ts";
 *
 * // Needs a CRIU image directory: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const taken = await readDumpImages("/var/lib/checkpoint", { timeoutMs: 10_000 });
 *   console.log(taken.pid, taken.connections.length);
 * }
 * ```
 *
 * @param dir The image directory.
 * @param settings Timeout, signal, logger of the spawn that reads them.
 * @returns The dumped root, connections and listeners.
 */
export async function readDumpImages(dir: string, settings: ExecSettings): Promise<DumpImages> {
  const exec = nsenterExec([], settings);
  const [pstree, files] = await Promise.all(
    ["pstree.img", "files.img"].map((name) =>
      exec("base64", ["-w", "0", `${dir.replace(/\/+$/, "")}/${name}`])
    ),
  );
  for (const [name, result] of [["pstree.img", pstree], ["files.img", files]] as const) {
    if (!result.success) {
      const why = firstLine(result.stderr).replace(/^base64: /, "") ||
        describeFailure(result, "base64");
      throw new NetlockError("INVALID_IMAGES", `${dir} holds no CRIU dump (${name}: ${why})`);
    }
  }
  try {
    const taken = parseDumpedSockets(decode(files.stdout));
    return { pid: parseDumpedRoot(decode(pstree.stdout)), ...taken };
  } catch (error) {
    throw new NetlockError(
      "INVALID_IMAGES",
      `${dir} holds no CRIU dump netlock can read (${(error as Error).message})`,
    );
  }
}

/**
 * Locks what a dump took (its image directory `images`) in the target's
 * namespace (default netlock's own: a tree on the host's network):
 * `NAME-cPID` for the dumped root's PID, the dumped connections and the
 * SYNs to its listeners, as the CRIU hook keeps them after a final dump.
 * Idempotent; visible in `list`. The restore's hook removes it once the
 * restore succeeds, and keeps it when the restore fails.
 *
 * @example
 * ```ts
 * import { lockImages } from "./images.ts";
 *
 * // Needs root and a CRIU image directory: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const result = await lockImages("/var/lib/checkpoint");
 *   console.log(result.dumped, result.connections);
 * }
 * ```
 *
 * @param images The dump's image directory.
 * @param target Where to lock (default netlock's own namespace).
 * @param options Backend, name, mark, timeout, logger.
 * @returns What was done.
 */
export async function lockImages(
  images: string,
  target: Target = { netns: OWN_NAMESPACE },
  options: NetlockOptions = {},
): Promise<ImagesResult> {
  return await fromImages(images, target, options, "lock");
}

/**
 * Removes the lock of what a dump took (its image directory `images`) from
 * the target's namespace (default netlock's own): what a final dump of a
 * tree on this host kept (`NAME-cPID`, and a cgroup lock of the same PID),
 * once the tree runs on another host. Unlocking what is not locked
 * succeeds with `changed: false`.
 *
 * @example
 * ```ts
 * import { unlockImages } from "./images.ts";
 *
 * // Needs root and a CRIU image directory: type-checked here, not run.
 * export async function example(): Promise<void> {
 *   const result = await unlockImages("/var/lib/checkpoint");
 *   console.log(result.changed);
 * }
 * ```
 *
 * @param images The dump's image directory.
 * @param target Where to unlock (default netlock's own namespace).
 * @param options Backend, name, timeout, logger.
 * @returns What was done.
 */
export async function unlockImages(
  images: string,
  target: Target = { netns: OWN_NAMESPACE },
  options: NetlockOptions = {},
): Promise<ImagesResult & UnlockResult> {
  return await fromImages(images, target, options, "unlock");
}

async function fromImages(
  images: string,
  target: Target,
  options: NetlockOptions,
  verb: "lock" | "unlock",
): Promise<ImagesResult> {
  const start = performance.now();
  // A lock shaped by connections: safe in netlock's own namespace too.
  const opts = resolveOptions({ ...options, mode: "netns", force: true }, verb);
  const given = toTargetRef(target, { userns: opts.userns });
  const ref = given.path === OWN_NAMESPACE ? { ...given, label: "netlock's own namespace" } : given;
  try {
    const taken = await readDumpImages(images, opts.exec);
    const prepared = await prepare(ref, opts, verb);
    let outcome: NamespaceOutcome;
    const warnings: string[] = [];
    if (verb === "unlock") {
      outcome = await unlockAllBackends(prepared, opts, {
        shapes: [
          connectionShape(opts.name, opts.mark, taken.pid),
          cgroupShape(opts.name, opts.mark, taken.pid),
        ],
      });
    } else if (taken.connections.length + taken.listeners.length === 0) {
      warnings.push(`the dump in ${images} took no TCP connection or listener: nothing to lock`);
      outcome = { changed: false, backend: opts.backend === "nftables" ? "nftables" : "iptables" };
    } else {
      const shape = connectionShape(
        opts.name,
        opts.mark,
        taken.pid,
        taken.connections,
        taken.listeners,
      );
      outcome = await lockWithBackend(prepared, opts, shape);
    }
    const connections = verb === "lock" ? taken.connections.length : 0;
    return {
      target: { path: ref.path, netns: prepared.probe.netns },
      locked: verb === "lock" && connections + taken.listeners.length > 0,
      changed: outcome.changed,
      mode: "connections",
      backend: outcome.backend,
      families: familiesOf(outcome.backend, prepared),
      name: opts.name,
      mark: opts.mark,
      connections,
      durationMs: performance.now() - start,
      kinds: verb === "unlock"
        ? (outcome.locks ?? []).length > 0 ? ["connections"] : []
        : ["connections"],
      dumped: taken.pid,
      ...(warnings.length + (outcome.warnings?.length ?? 0) > 0
        ? { warnings: [...warnings, ...(outcome.warnings ?? [])] }
        : {}),
    };
  } catch (error) {
    throw inContext(error, verb, ref);
  }
}

/** The bytes of base64 text (whitespace ignored). */
function decode(text: string): Uint8Array {
  const binary = atob(text.replace(/\s+/g, ""));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
