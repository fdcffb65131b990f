/**
 * A process tree with live TCP connections, and a peer outside it that
 * keeps sending on every connection all along and checks every echoed
 * byte: what the connection and cgroup locks and CRIU's dumps are tried on.
 * The tree (`echo_tree.py`) is a session leader whose children hold the
 * connections; it can be started in a cgroup v2 of its own. Its parent is
 * `reaper.py`, which reaps it as soon as it dies (as a container runtime
 * would), so that a restore need not wait for PID 1 to free its PIDs.
 */
import { must, sh, type TestNetns } from "./netns.ts";
import { lineReader } from "./lines.ts";

const TREE = new URL("./echo_tree.py", import.meta.url).pathname;
const REAPER = new URL("./reaper.py", import.meta.url).pathname;
const PEER = new URL("./echo_peer.ts", import.meta.url).pathname;

/** A cgroup v2 the test made (a directory under the cgroup v2 mount). */
export interface Cgroup extends AsyncDisposable {
  /** Its directory. */
  dir: string;
  /** Its path as /proc/PID/cgroup says it (`/nltest-...`). */
  path: string;
}

let counter = 0;

/** Makes a cgroup v2 `nltest-PID-N` at the top of the hierarchy; removed on dispose (emptied first). */
export async function createCgroup(): Promise<Cgroup> {
  const mounts = await Deno.readTextFile("/proc/mounts");
  const mount = mounts.split("\n").map((line) => line.split(" ")).find((f) => f[2] === "cgroup2")
    ?.[1];
  if (!mount) throw new Error("cgroup v2 is not mounted");
  const path = `/nltest-${Deno.pid}-${++counter}`;
  const dir = `${mount}${path}`;
  await Deno.mkdir(dir);
  return {
    dir,
    path,
    async [Symbol.asyncDispose]() {
      // Whatever is left in it goes back to the root cgroup, then it is removed.
      for (let i = 0; i < 100; i++) {
        const procs = (await Deno.readTextFile(`${dir}/cgroup.procs`).catch(() => "")).trim();
        if (procs === "") break;
        for (const pid of procs.split("\n")) {
          await Deno.writeTextFile(`${mount}/cgroup.procs`, pid).catch(() => {});
        }
      }
      await must(["rmdir", dir]).catch(() => {});
    },
  };
}

/** The dumped tree: its root's PID (a session leader), killed with its tree on dispose. */
export interface Tree extends AsyncDisposable {
  /** The root's PID, as CRIU is given it. */
  pid: number;
  /** The tree's processes now (read before a dump: `gone()` waits for each). */
  members(): number[];
  /** Forgets the original tree (CRIU killed it) and waits until every process of it is reaped. */
  gone(): Promise<void>;
  /** Whether the tree is thawed: its root lives, and none of it is stopped or held by a tracer. */
  thawed(): boolean;
  /** Takes over the restored tree, to be killed on dispose. */
  restored(pid: number): void;
}

/** Where a tree listens. */
export interface Place {
  /** Its namespace. */
  netns: TestNetns;
  /** The address it listens on. */
  address: string;
}

/**
 * Starts `echo_tree.py` (a session leader, as CRIU wants its root) in the
 * namespace, listening on PORT, in the cgroup `cgroup` when given (joined
 * before anything is created, so that its sockets are the cgroup's); returns
 * once it listens.
 */
export async function startTree(
  at: Place,
  port: number,
  connections: number,
  children: number,
  cgroup?: Cgroup,
): Promise<Tree> {
  const tree = [
    "nsenter",
    `--net=${at.netns.path}`,
    "--",
    "python3",
    TREE,
    at.address,
    String(port),
    String(connections),
    String(children),
  ];
  // The root joins the cgroup itself: the reaper stays outside the tree's cgroup.
  const root = cgroup
    ? ["sh", "-c", 'echo $$ >"$0/cgroup.procs" && exec "$@"', cgroup.dir, ...tree]
    : tree;
  const child = new Deno.Command("python3", {
    args: [REAPER, ...root],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const output = lineReader(child.stdout);
  const first = await output.next();
  output.drain();
  const pid = Number(first);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`reaper.py printed no PID: ${first}`);
  let restoredPid: number | undefined;
  for (let i = 0; i < 200; i++) {
    const ss = await sh(["nsenter", `--net=${at.netns.path}`, "ss", "-tlnH", `sport = :${port}`]);
    if (ss.stdout.trim() !== "") break;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  let reaped = false;
  let members: number[] = [];
  return {
    pid,
    members() {
      members = descendants(pid);
      return members;
    },
    async gone() {
      // The reaper ends once it reaped every process of the tree.
      await child.status;
      await output.drain();
      reaped = true;
      await waitForNoTree(at, port);
      for (let i = 0; i < 400 && members.some((pid) => exists(pid)); i++) {
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
    },
    thawed() {
      // The root lives and no process of the tree is stopped: a tree CRIU
      // left frozen shows `t`. (Children CRIU killed with their sockets in
      // repair mode, as a CRIU killed inside the dump leaves them, are
      // zombies: not frozen.)
      const root = stateOf(pid);
      return root !== undefined && root !== "Z" && root !== "X" &&
        descendants(pid).every((member) => !["t", "T"].includes(stateOf(member) ?? ""));
    },
    restored(pid) {
      restoredPid = pid;
    },
    async [Symbol.asyncDispose]() {
      // The whole tree: the root's session.
      await sh(["pkill", "-KILL", "-s", String(restoredPid ?? pid)]);
      if (!reaped) await child.status;
      await output.drain();
      await waitForNoTree(at, port);
    },
  };
}

/** The process and its descendants, from each task's children file in /proc. */
function descendants(root: number): number[] {
  const pids = [root];
  for (let i = 0; i < pids.length; i++) {
    try {
      for (const task of Deno.readDirSync(`/proc/${pids[i]}/task`)) {
        const children = Deno.readTextFileSync(`/proc/${pids[i]}/task/${task.name}/children`);
        pids.push(...children.split(" ").filter(Boolean).map(Number));
      }
    } catch { /* exited */ }
  }
  return pids;
}

/** A process's state letter (`/proc/PID/stat`), `undefined` when it is gone. */
function stateOf(pid: number): string | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return undefined;
  }
}

function exists(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

async function waitForNoTree(at: Place, port: number): Promise<void> {
  // Only this namespace's: a tree elsewhere (another test's, a leftover)
  // may have the same command line.
  const netns = Deno.statSync(at.netns.path).ino;
  const inNetns = (pid: string) => {
    try {
      return Deno.statSync(`/proc/${pid}/ns/net`).ino === netns;
    } catch {
      return false;
    }
  };
  for (let i = 0; i < 400; i++) {
    const left = await sh(["pgrep", "-f", `echo_tree.py ${at.address} ${port} `]);
    if (!left.stdout.split("\n").some((pid) => pid !== "" && inNetns(pid))) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The peer: sends on every connection until stopped; then its verdict. */
export interface Peer extends AsyncDisposable {
  /** The echoed bytes so far. */
  progress(): number;
  /** How many connections failed so far (reset, closed, a wrong byte): silence is not this. */
  broken(): number;
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
  /** The longest a chunk waited for its whole echo, on any connection. */
  maxWaitMs: number;
  /** The median over connections of each one's longest wait for an echo. */
  medianWaitMs: number;
}

/** Starts the peer in `netns`, connected to the tree at `at`; returns once connected. */
export async function startPeer(
  netns: TestNetns,
  at: Place,
  port: number,
  connections: number,
  pauseMs = 20,
): Promise<Peer> {
  const child = new Deno.Command("nsenter", {
    args: [
      `--net=${netns.path}`,
      "--",
      Deno.execPath(),
      "run",
      "--no-config",
      "--allow-net",
      PEER,
      at.address,
      String(port),
      String(connections),
      String(pauseMs),
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let echoed = 0;
  let broken = 0;
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
        else if (line.startsWith("broken ")) broken++;
        else if (line.startsWith("{")) verdict = JSON.parse(line);
      }
    }
  })();
  let stdinClosed = false;
  const closeStdin = async (text: string) => {
    if (stdinClosed) return;
    stdinClosed = true;
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(text)).catch(() => {});
    await writer.close().catch(() => {});
    writer.releaseLock();
  };
  const stop = async () => {
    await closeStdin("stop\n");
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
    broken: () => broken,
    async flowing(bytes = 4096) {
      const from = echoed;
      for (let i = 0; i < 600 && echoed < from + bytes; i++) {
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      if (echoed < from + bytes) throw new Error(`no echo for 15 s (at ${echoed} bytes)`);
    },
    stop,
    async [Symbol.asyncDispose]() {
      // Stopped, or not: it may have ended on its own (its connections reset).
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      await closeStdin("");
      await reading.catch(() => {});
    },
  };
}
