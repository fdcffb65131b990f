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
import { IN_CI, integration, must, sh, type TestNetns } from "./netns.ts";

const TREE = new URL("./echo_tree.py", import.meta.url).pathname;
const PEER = new URL("./echo_peer.ts", import.meta.url).pathname;
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

/** The tree's namespace, the peer's, and the addresses between them. */
export interface Pod extends AsyncDisposable {
  /** The tree's namespace. */
  pod: TestNetns;
  /** The peer's namespace. */
  peer: TestNetns;
  /** The tree's address. */
  address: string;
}

/** Two namespaces joined by a veth pair: the pod (10.215.N.2) and its peer (10.215.N.1). */
export async function createPod(create: () => Promise<TestNetns>): Promise<Pod> {
  const pod = await create();
  const peer = await create();
  const n = (Deno.pid + ++counter) % 250;
  const suffix = `${Deno.pid % 10000}${counter}`;
  await must([
    "ip",
    "link",
    "add",
    `nlp${suffix}`,
    "netns",
    pod.name,
    "type",
    "veth",
    "peer",
    "name",
    `nlq${suffix}`,
    "netns",
    peer.name,
  ]);
  await must(["ip", "-n", pod.name, "addr", "add", `10.215.${n}.2/30`, "dev", `nlp${suffix}`]);
  await must(["ip", "-n", peer.name, "addr", "add", `10.215.${n}.1/30`, "dev", `nlq${suffix}`]);
  await must(["ip", "-n", pod.name, "link", "set", `nlp${suffix}`, "up"]);
  await must(["ip", "-n", peer.name, "link", "set", `nlq${suffix}`, "up"]);
  return {
    pod,
    peer,
    address: `10.215.${n}.2`,
    async [Symbol.asyncDispose]() {
      await peer[Symbol.asyncDispose]();
      await pod[Symbol.asyncDispose]();
    },
  };
}

/** The dumped tree: its root's PID (a session leader), killed with its tree on dispose. */
export interface Tree extends AsyncDisposable {
  /** The root's PID, as CRIU is given it. */
  pid: number;
  /** Forgets the original tree (CRIU killed it) and waits until it is reaped. */
  gone(): Promise<void>;
  /** Takes over the restored tree, to be killed on dispose. */
  restored(pid: number): void;
}

/** Starts `echo_tree.py` in the pod, listening on PORT; returns once it listens. */
export async function startTree(
  pod: Pod,
  port: number,
  connections: number,
  children: number,
): Promise<Tree> {
  const child = new Deno.Command("nsenter", {
    args: [
      `--net=${pod.pod.path}`,
      "--",
      "setsid",
      "python3",
      TREE,
      pod.address,
      String(port),
      String(connections),
      String(children),
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let restoredPid: number | undefined;
  for (let i = 0; i < 200; i++) {
    const ss = await sh(["nsenter", `--net=${pod.pod.path}`, "ss", "-tlnH", `sport = :${port}`]);
    if (ss.stdout.trim() !== "") break;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  let reaped = false;
  return {
    pid: child.pid,
    async gone() {
      await child.status;
      reaped = true;
      // Its children were reparented and killed too: wait until their PIDs are free.
      await waitForNoTree(pod);
    },
    restored(pid) {
      restoredPid = pid;
    },
    async [Symbol.asyncDispose]() {
      // The whole tree: the root's session.
      await sh(["pkill", "-KILL", "-s", String(restoredPid ?? child.pid)]);
      if (!reaped) await child.status;
      await waitForNoTree(pod);
    },
  };
}

async function waitForNoTree(pod: Pod): Promise<void> {
  for (let i = 0; i < 400; i++) {
    const left = await sh(["pgrep", "-f", `echo_tree.py ${pod.address} `]);
    if (left.code !== 0) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The peer: sends on every connection until stopped; then its verdict. */
export interface Peer extends AsyncDisposable {
  /** The echoed bytes so far. */
  progress(): number;
  /** Resolves once at least `bytes` more were echoed (15 s at most). */
  flowing(bytes?: number): Promise<void>;
  /** Stops sending and returns the verdict. */
  stop(): Promise<PeerVerdict>;
}

/** What the peer saw. */
export interface PeerVerdict {
  connections: number;
  sent: number;
  echoed: number;
  ok: boolean;
  resets: number;
  errors: string[];
  maxSilenceMs: number;
}

/** Starts the peer in the peer namespace, connected to the tree; returns once connected. */
export async function startPeer(
  pod: Pod,
  port: number,
  connections: number,
  pauseMs = 20,
): Promise<Peer> {
  const child = new Deno.Command("nsenter", {
    args: [
      `--net=${pod.peer.path}`,
      "--",
      Deno.execPath(),
      "run",
      "--no-config",
      "--allow-net",
      PEER,
      pod.address,
      String(port),
      String(connections),
      String(pauseMs),
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let echoed = 0;
  let verdict: PeerVerdict | undefined;
  let ready!: () => void;
  const connected = new Promise<void>((resolve) => ready = resolve);
  const reading = (async () => {
    let buffered = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let at;
      while ((at = buffered.indexOf("\n")) !== -1) {
        const line = buffered.slice(0, at);
        buffered = buffered.slice(at + 1);
        if (line === "connected") ready();
        else if (line.startsWith("progress ")) echoed = Number(line.split(" ")[1]);
        else if (line.startsWith("{")) verdict = JSON.parse(line);
      }
    }
  })();
  const writer = child.stdin.getWriter();
  const stop = async () => {
    await writer.write(new TextEncoder().encode("stop\n")).catch(() => {});
    await writer.close().catch(() => {});
    await child.status;
    await reading;
    if (!verdict) throw new Error("the peer gave no verdict");
    return verdict;
  };
  await Promise.race([
    connected,
    child.status.then((status) => {
      throw new Error(`the peer exited (${status.code}) before it connected`);
    }),
  ]);
  return {
    progress: () => echoed,
    async flowing(bytes = 4096) {
      const from = echoed;
      for (let i = 0; i < 600 && echoed < from + bytes; i++) {
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      if (echoed < from + bytes) throw new Error(`no echo for 15 s (at ${echoed} bytes)`);
    },
    stop,
    async [Symbol.asyncDispose]() {
      if (!verdict) {
        try {
          child.kill("SIGKILL");
        } catch { /* exited */ }
        await writer.close().catch(() => {});
        await child.status;
        await reading.catch(() => {});
      }
    },
  };
}

/** How CRIU ran. */
export interface CriuRun {
  code: number;
  /** The log's error lines, when it failed. */
  errors: string;
}

/** `criu dump` of the tree, netlock's hook as the action script, the pod's namespace external. */
export async function criuDump(
  pod: Pod,
  tree: Tree,
  images: string,
  extra: string[],
  env: Record<string, string>,
): Promise<CriuRun> {
  const inode = (await must(["stat", "-L", "-c", "%i", pod.pod.path])).trim();
  const args = ["-t", String(tree.pid), "--external", `net[${inode}]:pod`, ...extra];
  return await criu(["dump", ...withHook(images, "dump.log"), ...args], env, images);
}

/** What every dump and restore of the tests is given: images, log, the hook instead of CRIU's lock. */
function withHook(images: string, log: string): string[] {
  return [
    "-D",
    images,
    "-o",
    log,
    "-v4",
    "--tcp-established",
    "--network-lock",
    "skip",
    "--action-script",
    HOOK,
  ];
}

/**
 * `criu restore -d` of the images into the pod's namespace (inherited as fd
 * 7); retried while the dumped tree's PIDs are still taken (a process that
 * held TCP sockets keeps its PID a few seconds after it died). Returns the
 * restored root's PID.
 */
export async function criuRestore(
  pod: Pod,
  images: string,
  env: Record<string, string>,
): Promise<{ pid: number } & CriuRun> {
  const args = [
    "restore",
    "-d",
    ...withHook(images, "restore.log"),
    "--inherit-fd",
    "fd[7]:pod",
    "--pidfile",
    `${images}/restored.pid`,
  ];
  for (let attempt = 0;; attempt++) {
    const run = await criu(args, env, images, pod.pod.path);
    if (run.code === 0) {
      const pid = Number((await Deno.readTextFile(`${images}/restored.pid`)).trim());
      return { pid, ...run };
    }
    if (!/Can't fork for [0-9]+: File exists/.test(run.errors) || attempt > 50) {
      return { pid: 0, ...run };
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function criu(
  args: string[],
  env: Record<string, string>,
  images: string,
  inherit?: string,
): Promise<CriuRun> {
  const bin = criuBin();
  // The pod's namespace is handed to a restore as an open descriptor.
  const argv = inherit
    ? ["sh", "-c", 'exec 7<"$0"; exec "$@"', inherit, bin, ...args]
    : [bin, ...args];
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
  return { code: out.code, errors };
}
