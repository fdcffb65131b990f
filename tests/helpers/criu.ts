/**
 * A real CRIU for the tests: a process tree in a pod-style network namespace
 * of its own (made with `ip netns add`, joined by a veth pair to a peer's
 * namespace, and given to CRIU as external: `--external net[INODE]:pod` on
 * dump, `--inherit-fd fd[N]:pod` on restore), a peer that keeps sending on
 * every connection, and CRIU's dump and restore with netlock's
 * `criu-hook.sh` as the action script.
 *
 * CRIU comes from `CRIU_BIN`, else `criu` on PATH; it must pass `criu
 * check`. `.ci/run` provides one (it builds CRIU 4.2 if it must). Outside CI
 * a test without one is skipped, saying why; under CI it fails.
 */
import { IN_CI, integration, must, sh, type TestNetns, vethPair } from "./netns.ts";
import { lineReader } from "./lines.ts";
import type { Tree } from "./tree.ts";

/** netlock's action script for CRIU. */
export const HOOK = new URL("../../criu-hook.sh", import.meta.url).pathname;

/** The CRIU binary, or why there is none. */
export const CRIU: { bin: string } | { missing: string } = findCriu();

function findCriu(): { bin: string } | { missing: string } {
  const bin = Deno.env.get("CRIU_BIN") ?? "criu";
  try {
    const check = new Deno.Command(bin, { args: ["check"], stdout: "null", stderr: "piped" })
      .outputSync();
    if (check.success) return { bin };
    const why = new TextDecoder().decode(check.stderr).trim().split("\n").at(-1);
    return { missing: `${bin} fails 'criu check': ${why}` };
  } catch {
    return { missing: `no CRIU (set CRIU_BIN, or put criu on PATH; tried ${bin})` };
  }
}

/** Test options: an integration test that needs CRIU (never skipped under CI). */
export const withCriu = {
  ...integration,
  ignore: integration.ignore || (!IN_CI && "missing" in CRIU),
};
if (withCriu.ignore && !integration.ignore && "missing" in CRIU) {
  console.error(`real-CRIU tests skipped: ${CRIU.missing}`);
}

/** The CRIU binary; throws (failing the test) when there is none. */
export function criuBin(): string {
  if ("missing" in CRIU) throw new Error(`real-CRIU test without CRIU: ${CRIU.missing}`);
  return CRIU.bin;
}

let counter = 0;

/** The tree's namespace, the peer's, and the tree's address between them. */
export interface Pod extends AsyncDisposable {
  /** The tree's namespace. */
  pod: TestNetns;
  /** The peer's namespace. */
  peer: TestNetns;
  /** The tree's address. */
  address: string;
}

/** Two namespaces joined by a veth pair: the pod (198.18.N.2) and its peer (198.18.N.1). */
export async function createPod(create: () => Promise<TestNetns>): Promise<Pod> {
  const pod = await create();
  const peer = await create();
  const n = (Deno.pid + ++counter) % 250;
  const suffix = `${Deno.pid % 10000}${counter}`;
  await vethPair(`nlp${suffix}`, pod.name, `nlq${suffix}`, peer.name);
  await must(["ip", "-n", pod.name, "addr", "add", `198.18.${n}.2/30`, "dev", `nlp${suffix}`]);
  await must(["ip", "-n", peer.name, "addr", "add", `198.18.${n}.1/30`, "dev", `nlq${suffix}`]);
  await must(["ip", "-n", pod.name, "link", "set", `nlp${suffix}`, "up"]);
  await must(["ip", "-n", peer.name, "link", "set", `nlq${suffix}`, "up"]);
  return {
    pod,
    peer,
    address: `198.18.${n}.2`,
    async [Symbol.asyncDispose]() {
      await peer[Symbol.asyncDispose]();
      await pod[Symbol.asyncDispose]();
    },
  };
}

/** How CRIU ran. */
export interface CriuRun {
  code: number;
  /** The log's error lines, when it failed. */
  errors: string;
  /** CRIU's whole log (the action script's stderr goes there too). */
  log: string;
}

/**
 * Where CRIU runs, and the tree's namespace: a pod (the tree's namespace is
 * external to CRIU: `--external net[INODE]:pod` on dump, `--inherit-fd
 * fd[7]:pod` on restore), or a host (CRIU runs in the namespace the tree
 * shares, as for a service on the host).
 */
export type Setting = ({ pod: Pod } | { host: TestNetns }) & {
  /** The action script (default criu-hook.sh). */
  hook?: string;
  /** CRIU's own lock instead (`["--network-lock", "iptables"]`), or no script at all. */
  lock?: string[];
  /**
   * CRIU leads a process group (and session) of its own, as under
   * `timeout(1)` or a service manager, so that its whole group can be killed.
   */
  ownGroup?: boolean;
  /** What runs CRIU's command line (entering a PID namespace, say). */
  prefix?: string[];
};

/** What runs a command in the cgroup v2 directory `dir` (as a service manager starts a unit). */
export function inCgroup(dir: string): string[] {
  return ["sh", "-c", 'echo $$ >"$0/cgroup.procs" && exec "$@"', dir];
}

/** `criu dump` of the tree, netlock's hook (or `setting.hook`) as the action script. */
export async function criuDump(
  setting: Setting,
  tree: Tree,
  images: string,
  extra: string[],
  env: Record<string, string>,
): Promise<CriuRun> {
  const external = "pod" in setting
    ? [
      "--external",
      `net[${(await must(["stat", "-L", "-c", "%i", setting.pod.pod.path])).trim()}]:pod`,
    ]
    : [];
  const args = ["-t", String(tree.pid), ...external, ...extra];
  return await criu(
    setting,
    ["dump", ...withHook(setting, images, "dump.log"), ...args],
    env,
    images,
  );
}

/** What every dump and restore of the tests is given: images, log, the hook instead of CRIU's lock. */
function withHook(setting: Setting, images: string, log: string): string[] {
  return [
    "-D",
    images,
    "-o",
    log,
    "-v4",
    "--tcp-established",
    ...(setting.lock ?? ["--network-lock", "skip", "--action-script", setting.hook ?? HOOK]),
  ];
}

/**
 * `criu restore -d` of the images (a pod's into its namespace); retried
 * while the dumped tree's PIDs are still taken (a process that held TCP
 * sockets keeps its PID a few seconds after it died), as users retry; with
 * `once`, the first attempt is all. Returns the restored root's PID.
 */
export async function criuRestore(
  setting: Setting,
  images: string,
  env: Record<string, string>,
  once = false,
): Promise<{ pid: number } & CriuRun> {
  const args = [
    "restore",
    "-d",
    ...withHook(setting, images, "restore.log"),
    ...("pod" in setting ? ["--inherit-fd", "fd[7]:pod"] : []),
    "--pidfile",
    `${images}/restored.pid`,
  ];
  for (let attempt = 0;; attempt++) {
    const run = await criu(setting, args, env, images);
    if (run.code === 0) {
      const pid = Number((await Deno.readTextFile(`${images}/restored.pid`)).trim());
      return { pid, ...run };
    }
    if (once || !/Can't fork for [0-9]+: File exists/.test(run.errors) || attempt > 50) {
      return { pid: 0, ...run };
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function criu(
  setting: Setting,
  args: string[],
  env: Record<string, string>,
  images: string,
): Promise<CriuRun> {
  const bin = criuBin();
  // A pod's namespace is handed to a restore as an open descriptor; a host's is entered.
  const inNetns = "pod" in setting
    ? args[0] === "restore"
      ? ["sh", "-c", 'exec 7<"$0"; exec "$@"', setting.pod.pod.path, bin, ...args]
      : [bin, ...args]
    : ["nsenter", `--net=${setting.host.path}`, "--", bin, ...args];
  // setsid --wait: CRIU leads its own group; setsid waits and passes its status on.
  const argv = [
    ...setting.prefix ?? [],
    ...setting.ownGroup ? ["setsid", "--wait"] : [],
    ...inNetns,
  ];
  const out = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const log = await Deno.readTextFile(`${images}/${args[0]}.log`).catch(() => "");
  const errors = log.split("\n").filter((line) => /Error|Warn.*lock|netlock|error: /.test(line))
    .slice(-8).join("\n") + new TextDecoder().decode(out.stderr);
  return { code: out.code, errors, log };
}

/** A wrapped action script: its path, and the locks it saw after each action. */
export interface WrappedHook extends AsyncDisposable {
  /** The script to give CRIU. */
  path: string;
  /** `ACTION NAME...` after each action: netlock's locks in the tree's namespace then. */
  locks(): Promise<string[]>;
}

/**
 * With `noteQueues`: the packets the tree namespace's queues took so far,
 * as the wrapper noted them after `action` (NaN when it did not).
 */
export function queuedAfter(notes: string[], action: string): number {
  return Number(notes.find((line) => line.startsWith(`${action} `))?.match(/queued=([0-9]+)/)?.[1]);
}

/** What the wrapper does beside running criu-hook.sh. */
export interface WrapOptions {
  /** Kills CRIU (SIGKILL) once this action is done, before CRIU goes on. */
  killAt?: string;
  /** With `killAt`: kills CRIU's whole process group (CRIU, its scripts, what they left in it). */
  group?: boolean;
  /**
   * With `killAt`: kills every process of this cgroup v2 directory (CRIU's:
   * `cgroup.kill`, as a unit stop does), whatever its process group.
   */
  cgroup?: string;
  /** Sleeps this long before this action's hook runs (`[action, seconds]`): a long dump. */
  delay?: [string, number];
  /**
   * Notes `criu-pid=PID start=TICKS ACTION watchers=N` (CRIU as the hook
   * finds it, and how many restore watchers' markers exist) instead of the
   * locks.
   */
  notePid?: boolean;
  /**
   * Stops (SIGSTOP) the hook's helper once this action is done, and notes
   * `stopped PID`: the test decides when it goes on (`SIGCONT`), e.g.
   * after something happened that the helper must see once CRIU is gone.
   */
  stopHelperAt?: string;
  /**
   * Adds `queued=N` to each note: how many packets the tree's namespace's
   * netfilter queues took so far (the sum of their id sequences), 0
   * without a queue.
   */
  noteQueues?: boolean;
}

/**
 * An action script that runs criu-hook.sh (as a wrapper would: criu-hook.sh
 * finds CRIU by its image directory), then, after each action, notes which
 * of netlock's locks are in the tree's namespace (`locks()` reads the
 * notes: `ACTION NAME...`), and kills CRIU or its group, or waits, as told.
 */
export async function wrappedHook(options: WrapOptions = {}): Promise<WrappedHook> {
  const dir = await Deno.makeTempDir({ prefix: "nltest-hook-" });
  const path = `${dir}/hook.sh`;
  const notes = `${dir}/locks`;
  // The tree's namespace: CRIU's own, or (a pod) its root's.
  const inTree =
    'if [ -n "$CRTOOLS_INIT_PID" ]; then nsenter --target "$CRTOOLS_INIT_PID" --net -- "$@"; ' +
    'else "$@"; fi';
  const criu = "criu=${CRTOOLS_IMAGE_DIR#/proc/}; criu=${criu%%/*}";
  const kill = options.cgroup
    ? `echo 1 >${options.cgroup}/cgroup.kill`
    : options.group
    ? `${criu}; kill -KILL -$(ps -o pgid= -p "$criu" | tr -d ' ')`
    : `${criu}; kill -KILL "$criu"`;
  const [delayed, seconds] = options.delay ?? ["", 0];
  await Deno.writeTextFile(
    path,
    "#!/bin/sh\n" +
      (delayed ? `[ "$CRTOOLS_SCRIPT_ACTION" = ${delayed} ] && sleep ${seconds}\n` : "") +
      `${HOOK}\nrc=$?\nin_tree() { ${inTree}; }\n` +
      `names=$( { in_tree nft list ruleset; in_tree iptables-save; } 2>/dev/null | ` +
      `grep -oE 'NETLOCK(-[cg][0-9]+)?( |$)' | tr -d ' ' | sort -u | tr '\\n' ' ')\n` +
      (options.notePid
        ? `${criu}; read -r stat </proc/$criu/stat; set -- \${stat##*") "}; shift 19; ` +
          "watchers=$(ls /run/netlock/criu-*.watch 2>/dev/null | wc -l); " +
          `echo "criu-pid=$criu start=$1 $CRTOOLS_SCRIPT_ACTION watchers=$watchers" >>${notes}\n`
        : options.noteQueues
        ? "queued=$(in_tree cat /proc/net/netfilter/nfnetlink_queue 2>/dev/null | " +
          "awk '{ s += $8 } END { print s + 0 }')\n" +
          `echo "$CRTOOLS_SCRIPT_ACTION $names queued=$queued" >>${notes}\n`
        : `echo "$CRTOOLS_SCRIPT_ACTION $names" >>${notes}\n`) +
      (options.killAt
        ? `if [ "$CRTOOLS_SCRIPT_ACTION" = ${options.killAt} ]; then ${kill}; fi\n`
        : "") +
      (options.stopHelperAt
        ? `if [ "$CRTOOLS_SCRIPT_ACTION" = ${options.stopHelperAt} ]; then ` +
          'read -r dir <"$CRTOOLS_IMAGE_DIR/netlock-helper"; ' +
          'helper=$(pgrep -f "criu-hook --serve $dir "); kill -STOP $helper; ' +
          `echo "stopped $helper" >>${notes}; fi\n`
        : "") +
      "exit $rc\n",
    { mode: 0o755 },
  );
  return {
    path,
    locks: async () =>
      (await Deno.readTextFile(notes).catch(() => "")).trim().split("\n").map((line) =>
        line.trim()
      ),
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

const PID_HOLDER = new URL("./pid_holder.py", import.meta.url).pathname;

/**
 * Holds `pid` (a zombie, or a live process) until disposed: what makes a
 * restore fail with `Can't fork for PID: File exists`.
 */
export async function holdPid(pid: number, mode: "zombie" | "live"): Promise<AsyncDisposable> {
  const child = new Deno.Command("python3", {
    args: [PID_HOLDER, String(pid), mode],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const output = lineReader(child.stdout);
  const writer = child.stdin.getWriter();
  const free = async () => {
    await writer.write(new TextEncoder().encode("free\n")).catch(() => {});
    await writer.close().catch(() => {});
    const freed = await output.next();
    await output.drain();
    const status = await child.status;
    if (freed !== "freed" || !status.success) {
      throw new Error(`pid_holder: ${freed} (${status.code})`);
    }
  };
  const held = await output.next();
  if (held !== "held") {
    await free().catch(() => {});
    throw new Error(`pid_holder did not hold ${pid}: ${held}`);
  }
  return { [Symbol.asyncDispose]: free };
}

/** Waits (`tries` times 50 ms at most: 10 s) until no helper of the hook is left. */
export async function helpersGone(tries = 200): Promise<boolean> {
  for (let i = 0; i <= tries; i++) {
    const helpers = await sh(["pgrep", "-f", "cli\\.ts criu-hook --serve"]);
    if (helpers.code !== 0) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}
