/**
 * Helpers of the integration tests: namespaces the test creates and deletes,
 * the CLI run exactly as users run it, TCP probes inside a namespace, and
 * snapshots of every ruleset.
 */

import { runCommand } from "../../lib/exec/runner.ts";
import { lineReader } from "./lines.ts";

const decoder = new TextDecoder();
const ROOT = new URL("../../", import.meta.url);
const CLI = new URL("cli.ts", ROOT).pathname;
const TCP_TOOL = new URL("scripts/tcp_tool.ts", ROOT).pathname;

/**
 * `true` in CI, where an integration test must never be skipped: `CI` set to
 * anything but empty, `0`, `false` or `no` (CI systems say `true`, `1`, `yes`).
 */
export const IN_CI = ciIsSet(Deno.env.get("CI"));

/** Whether a `CI` value means "this is CI". */
export function ciIsSet(value: string | undefined): boolean {
  return value !== undefined && !["", "0", "false", "no"].includes(value.trim().toLowerCase());
}

function hasTools(): boolean {
  const probe = new Deno.Command("sh", {
    args: ["-c", "command -v nsenter ip iptables-restore ip6tables-restore iptables-save nft"],
    stdout: "null",
    stderr: "null",
    env: { PATH: `${Deno.env.get("PATH")}:/usr/sbin:/sbin` },
  }).outputSync();
  return probe.success;
}

/** Options for integration tests: run as root with the tools, never skipped in CI. */
export const integration = {
  ignore: !IN_CI && !(Deno.uid() === 0 && hasTools()),
  sanitizeOps: true,
  sanitizeResources: true,
};

/** The result of a finished command. */
export interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs an argv and collects its output. */
export async function sh(argv: string[], env?: Record<string, string>): Promise<Output> {
  const output = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    env,
  }).output();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs an argv and throws unless it exits 0. */
export async function must(argv: string[]): Promise<string> {
  const result = await sh(argv);
  if (result.code !== 0) {
    throw new Error(`${argv.join(" ")} exited with ${result.code}: ${result.stderr}`);
  }
  return result.stdout;
}

/**
 * Runs the CLI exactly as users do: `deno run --allow-run=nsenter cli.ts ...`.
 * `permissions` replaces `--allow-run=nsenter`.
 */
export function cli(
  args: string[],
  options: { env?: Record<string, string>; permissions?: string[] } = {},
): Promise<Output> {
  const permissions = options.permissions ?? ["--allow-run=nsenter"];
  return sh([Deno.execPath(), "run", "--no-config", ...permissions, CLI, ...args], {
    NO_COLOR: "1",
    ...options.env,
  });
}

/**
 * Runs the CLI inside the namespace (`--allow-run=nsenter`): processes
 * there share netlock's own namespace.
 */
export function cliInside(netns: { path: string }, args: string[]): Promise<Output> {
  return sh(
    [
      "nsenter",
      `--net=${netns.path}`,
      "--",
      Deno.execPath(),
      "run",
      "--no-config",
      "--allow-run=nsenter",
      CLI,
      ...args,
    ],
    { NO_COLOR: "1" },
  );
}

let counter = 0;

/** A network namespace the test created; deleted on dispose. */
export interface TestNetns extends AsyncDisposable {
  name: string;
  path: string;
  /** Runs argv inside the namespace; throws unless it exits 0. */
  run(argv: string[]): Promise<Output>;
}

/** A veth pair: `inner` in namespace `innerNs`, `outer` in `outerNs` (names in /run/netns). */
export async function vethPair(
  inner: string,
  innerNs: string,
  outer: string,
  outerNs: string,
): Promise<void> {
  await must([
    "ip",
    "link",
    "add",
    inner,
    "netns",
    innerNs,
    "type",
    "veth",
    "peer",
    "name",
    outer,
    "netns",
    outerNs,
  ]);
}

/** Creates `/run/netns/nltest-PID-N` with loopback up. */
export async function createNetns(): Promise<TestNetns> {
  const name = `nltest-${Deno.pid}-${++counter}`;
  await must(["ip", "netns", "add", name]);
  const netns: TestNetns = {
    name,
    path: `/run/netns/${name}`,
    async run(argv) {
      const result = await sh(["nsenter", `--net=/run/netns/${name}`, "--", ...argv]);
      if (result.code !== 0) {
        throw new Error(
          `${argv.join(" ")} in ${name} exited with ${result.code}: ${result.stderr}`,
        );
      }
      return result;
    },
    async [Symbol.asyncDispose]() {
      await sh(["ip", "netns", "delete", name]);
    },
  };
  await must(["ip", "-n", name, "link", "set", "lo", "up"]);
  return netns;
}

/**
 * Everything a lock could touch: both iptables views and the nft ruleset,
 * without counters. A view that cannot be read fails the test (an empty
 * "before" and "after" would compare equal).
 */
export async function snapshot(netns: TestNetns): Promise<string> {
  const parts = [];
  for (const argv of [["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]]) {
    const result = await netns.run(argv);
    parts.push(
      `## ${argv[0]}\n` +
        result.stdout.split("\n").filter((line) => !line.startsWith("#"))
          .map((line) => line.replace(/\[[0-9]+:[0-9]+\]/g, "[0:0]")).join("\n"),
    );
  }
  return parts.join("\n");
}

/**
 * Runs the Deno script TOOL (network permission only) inside the namespace,
 * through nsenter so that its PID is the process holding the sockets;
 * stdout piped, stderr inherited.
 */
export function spawnDenoTool(
  netns: TestNetns,
  tool: string,
  args: string[],
  stdin: "null" | "piped" = "null",
): Deno.ChildProcess {
  return new Deno.Command("nsenter", {
    args: [
      `--net=${netns.path}`,
      "--",
      Deno.execPath(),
      "run",
      "--no-config",
      "--allow-net",
      tool,
      ...args,
    ],
    stdin,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
}

/** An echo server inside a namespace; killed on dispose. */
export async function startServer(
  netns: TestNetns,
  endpoints: string[],
): Promise<AsyncDisposable> {
  const child = spawnDenoTool(netns, TCP_TOOL, ["serve", ...endpoints]);
  const output = lineReader(child.stdout);
  const first = await output.next();
  output.drain();
  if (first !== "ready") throw new Error(`server did not start: ${first}`);
  return {
    async [Symbol.asyncDispose]() {
      child.kill("SIGKILL");
      await child.status;
      await output.drain();
    },
  };
}

/** Connects from inside the namespace: "ok", "timeout", or the error's name. */
export async function probe(
  netns: TestNetns,
  host: string,
  port: number,
  timeoutMs = 1500,
  mode: "connect" | "open" = "connect",
): Promise<string> {
  const result = await netns.run([
    Deno.execPath(),
    "run",
    "--no-config",
    "--allow-net",
    TCP_TOOL,
    mode,
    host,
    String(port),
    String(timeoutMs),
  ]);
  return result.stdout.trim() || `exit ${result.code}: ${result.stderr.trim()}`;
}

/**
 * A client that connects (the handshake alone) from inside the namespace
 * while a dumped service is down: `pending()` says whether it still waits
 * (its SYNs dropped, not refused), `result` is "open", "timeout" or the
 * error's name (`ConnectionRefused`: the lock let a SYN meet no listener).
 */
export function waitingClient(
  netns: TestNetns,
  host: string,
  port: number,
  timeoutMs = 30_000,
): { result: Promise<string>; pending(): boolean } {
  let settled = false;
  const result = probe(netns, host, port, timeoutMs, "open").finally(() => settled = true);
  return { result, pending: () => !settled };
}

/**
 * The netfilter queues bound in the namespace (their numbers, from
 * `/proc/net/netfilter/nfnetlink_queue`): a holder's, while it holds.
 */
export async function boundQueues(netns: { run: TestNetns["run"] }): Promise<number[]> {
  const { stdout } = await netns.run(["cat", "/proc/net/netfilter/nfnetlink_queue"]);
  return stdout.split("\n").filter(Boolean).map((line) => Number(line.trim().split(/\s+/)[0]));
}

/**
 * A client in `netns` that connects to `address:port` (waiting `timeoutS`
 * at most, the kernel's SYN retries included): the wall-clock ms at which
 * it sent its first SYN (called connect) and at which it connected, or the
 * name of its error.
 */
export async function timedConnect(
  netns: { path: string },
  address: string,
  port: number,
  timeoutS = 5,
): Promise<{ sent: number; connected: number } | string> {
  const { stdout } = await new Deno.Command("nsenter", {
    args: [
      `--net=${netns.path}`,
      "--",
      "python3",
      "-c",
      "import socket,sys,time\ns=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else " +
      "socket.AF_INET)\ns.settimeout(float(sys.argv[3]))\nt=time.time()\n" +
      "try:\n  s.connect((sys.argv[1],int(sys.argv[2])))\n" +
      "  print(int(t*1000), int(time.time()*1000))\n" +
      "except Exception as e:\n  print(type(e).__name__)",
      address,
      String(port),
      String(timeoutS),
    ],
    stdout: "piped",
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(stdout).trim();
  const times = text.match(/^(\d+) (\d+)$/);
  return times ? { sent: Number(times[1]), connected: Number(times[2]) } : text;
}

/** One group of a namespace's IP stack counters (`/proc/net/snmp`: `Ip`, `Tcp`, ...), by name. */
export async function snmpCounters(
  netns: TestNetns,
  group: "Ip" | "Tcp",
): Promise<Record<string, number>> {
  const snmp = (await netns.run(["cat", "/proc/net/snmp"])).stdout;
  const [names, values] = snmp.split("\n").filter((line) => line.startsWith(`${group}:`))
    .map((line) => line.split(/\s+/));
  return Object.fromEntries(names.map((name, i) => [name, Number(values[i])]));
}

/** Counts the lines of a text that match a pattern. */
export function countLines(text: string, pattern: RegExp): number {
  return text.split("\n").filter((line) => pattern.test(line)).length;
}

/** A directory with fake tools to put first on PATH; removed on dispose. */
export async function fakeTools(
  tools: Record<string, string>,
): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "netlock-fake-" });
  for (const [name, script] of Object.entries(tools)) {
    await Deno.writeTextFile(`${dir}/${name}`, script, { mode: 0o755 });
  }
  return {
    path: `${dir}:${Deno.env.get("PATH")}:/usr/sbin:/sbin`,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const CONN_TOOL = new URL("tests/helpers/conn_tool.ts", ROOT).pathname;

/** A conn_tool.ts process in a namespace, driven line by line. */
export interface Endpoint extends AsyncDisposable {
  pid: number;
  /** Sends one command and returns its one-line answer. */
  ask(command: string): Promise<string>;
  /** Kills it now. */
  kill(): Promise<void>;
}

/** Starts `conn_tool.ts ARGS...` inside the namespace and waits for "ready". */
export async function startEndpoint(netns: TestNetns, args: string[]): Promise<Endpoint> {
  const process = spawnDenoTool(netns, CONN_TOOL, args, "piped");
  const output = lineReader(process.stdout);
  const writer = process.stdin.getWriter();
  const readLine = async (): Promise<string> => {
    const line = await output.next();
    if (line === undefined) throw new Error(`endpoint ${args.join(" ")} exited`);
    return line;
  };
  if ((await readLine()) !== "ready") throw new Error(`endpoint ${args.join(" ")} did not start`);
  let killed = false;
  const kill = async () => {
    if (killed) return;
    killed = true;
    try {
      process.kill("SIGKILL");
    } catch { /* already gone */ }
    await writer.close().catch(() => {});
    await process.status;
    await output.drain();
  };
  return {
    pid: process.pid,
    async ask(command: string) {
      await writer.write(new TextEncoder().encode(`${command}\n`));
      return await readLine();
    },
    kill,
    [Symbol.asyncDispose]: kill,
  };
}

/**
 * A `sleep` process inside the namespace, to give the namespace a PID;
 * returned once it is in the namespace (it says so from there); killed on
 * dispose.
 */
export async function startSleeper(netns: TestNetns): Promise<{ pid: number } & AsyncDisposable> {
  // nsenter execs sh, which execs sleep: one PID, in the namespace once "in" is printed.
  const child = new Deno.Command("nsenter", {
    args: [`--net=${netns.path}`, "--", "sh", "-c", "echo in; exec sleep 120"],
    stdin: "null",
    stdout: "piped",
  }).spawn();
  const output = lineReader(child.stdout);
  const dispose = async () => {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await output.drain();
  };
  const first = await output.next();
  output.drain();
  if (first !== "in") {
    await dispose();
    throw new Error(`the sleeper did not enter ${netns.name}: ${JSON.stringify(first)}`);
  }
  return { pid: child.pid, [Symbol.asyncDispose]: dispose };
}

/** Runs argv inside the namespace with `input` on stdin; throws unless it exits 0. */
export async function inNamespace(
  netns: TestNetns,
  argv: string[],
  input?: string,
): Promise<string> {
  const result = await runCommand("nsenter", {
    args: [`--net=${netns.path}`, "--", ...argv],
    stdin: input,
    timeoutMs: 0,
  });
  if (!result.success) {
    throw new Error(`${argv.join(" ")} exited with ${result.code}: ${result.stderr}`);
  }
  return result.stdout;
}

/** A PATH holding only links to these tools (to take one away); removed on dispose. */
export async function toolsOnly(tools: string[]): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "netlock-tools-" });
  for (const tool of tools) {
    const where = (await must(["sh", "-c", `PATH="$PATH:/usr/sbin:/sbin" command -v ${tool}`]))
      .trim();
    await Deno.symlink(where, `${dir}/${tool}`);
  }
  return { path: dir, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}
