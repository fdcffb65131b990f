/**
 * Two "hosts" for migration tests and benchmarks: network namespaces A and
 * B, and a peer's, joined by a bridge in a fourth; the service's address
 * on A until it moves.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createNetns, must, type TestNetns, vethPair } from "./netns.ts";
import { criuBin } from "./criu.ts";

const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
/** The page server's port on B. */
const PAGE_SERVER_PORT = 27110;

/** Two hosts and a peer on one bridge (in a namespace of its own). */
export interface Hosts extends AsyncDisposable {
  a: TestNetns;
  b: TestNetns;
  peer: TestNetns;
  /** Each host's interface on the bridge (its `br0` when bridged). */
  devA: string;
  devB: string;
  /** B's own address: its page server's. */
  addressB: string;
  /** The service's address (on A first), with its prefix length. */
  address: string;
  prefix: number;
  /** The subnet's first three octets (`198.18.N`). */
  subnet: string;
}

let counter = 0;

/**
 * Creates the hosts A and B and the peer, each on the bridge (198.18.N.0/24,
 * N from 100); `bridged`: A's and B's uplinks in a bridge `br0` of their
 * own (their addresses on it), which containers' veths join.
 */
export async function createHosts(bridged = false): Promise<Hosts> {
  const bridge = await createNetns();
  const [a, b, peer] = [await createNetns(), await createNetns(), await createNetns()];
  const n = 100 + (Deno.pid + ++counter) % 100;
  const tag = `${Deno.pid % 1000}${counter}`;
  await must(["ip", "-n", bridge.name, "link", "add", "br0", "type", "bridge"]);
  await must(["ip", "-n", bridge.name, "link", "set", "br0", "up"]);
  const devs: string[] = [];
  for (const [i, host] of [a, b, peer].entries()) {
    const inner = `nlm${tag}h${i}`;
    const outer = `nlm${tag}b${i}`;
    await vethPair(inner, host.name, outer, bridge.name);
    await must(["ip", "-n", bridge.name, "link", "set", outer, "master", "br0", "up"]);
    await must(["ip", "-n", host.name, "link", "set", inner, "up"]);
    devs.push(inner);
  }
  // A host whose containers join its LAN: its uplink in a bridge of its own, which carries its addresses.
  if (bridged) {
    for (const [i, host] of [a, b].entries()) {
      await must(["ip", "-n", host.name, "link", "add", "br0", "type", "bridge"]);
      await must(["ip", "-n", host.name, "link", "set", devs[i], "master", "br0"]);
      await must(["ip", "-n", host.name, "link", "set", "br0", "up"]);
      devs[i] = "br0";
    }
  }
  // Each host's own address; the service's is A's until it moves.
  await must(["ip", "-n", a.name, "addr", "add", `198.18.${n}.2/24`, "dev", devs[0]]);
  await must(["ip", "-n", b.name, "addr", "add", `198.18.${n}.3/24`, "dev", devs[1]]);
  await must(["ip", "-n", peer.name, "addr", "add", `198.18.${n}.1/24`, "dev", devs[2]]);
  await must(["ip", "-n", a.name, "addr", "add", `198.18.${n}.10/24`, "dev", devs[0]]);
  return {
    a,
    b,
    peer,
    devA: devs[0],
    devB: devs[1],
    addressB: `198.18.${n}.3`,
    address: `198.18.${n}.10`,
    prefix: 24,
    subnet: `198.18.${n}`,
    async [Symbol.asyncDispose]() {
      for (const netns of [peer, b, a, bridge]) await netns[Symbol.asyncDispose]();
    },
  };
}

/** The walk-through's commands (docs/migration.md), with a run's values for its variables. */
export function walkthrough(
  hosts: Hosts,
  pid: number,
  images: string,
  imagesB: string,
  backend: string,
  extra: Record<string, string> = {},
): { expand: (line: string) => string[] } {
  const values: Record<string, string> = {
    ...extra,
    BACKEND: backend,
    NETLOCK: ROOT,
    CRIU: criuBin(),
    PID: String(pid),
    IMAGES: images,
    IMAGES_B: imagesB,
    // A pre-dump's directory beside the dump's, and as the dump names it.
    IMAGES_PRE: `${images}-pre`,
    PREV: `../${images.split("/").at(-1)}-pre`,
    IP_B: hosts.addressB,
    PS_PORT: String(PAGE_SERVER_PORT),
    ADDR: `${hosts.address}/${hosts.prefix}`,
    IP: hosts.address,
    DEV_A: hosts.devA,
    DEV_B: hosts.devB,
  };
  const expand = (line: string) =>
    line.split(" ").map((word) =>
      word.replace(/^"?\$([A-Z_]+)(.*?)"?$/, (_, v, rest) => {
        assert.ok(v in values, `the walk-through's $${v} is known`);
        return `${values[v]}${rest}`;
      })
    );
  return { expand };
}

/** The walk-through's lines, as docs/migration.md shows them (each must be there). */
export const STEPS = {
  preDumpDir: "mkdir -p $IMAGES_PRE",
  preDump: "$CRIU pre-dump -t $PID -D $IMAGES_PRE --tcp-established --network-lock skip " +
    "--action-script $NETLOCK/criu-hook.sh",
  dumpAfterPreDump: "$CRIU dump -t $PID -D $IMAGES --tcp-established --network-lock skip " +
    "--action-script $NETLOCK/criu-hook.sh --page-server --address $IP_B --port $PS_PORT " +
    "--prev-images-dir $PREV --track-mem",
  imagesB: "mkdir -p $IMAGES_B",
  pageServer: "$CRIU page-server -D $IMAGES_B --address $IP_B --port $PS_PORT -d",
  dump: "$CRIU dump -t $PID -D $IMAGES --tcp-established --network-lock skip " +
    "--action-script $NETLOCK/criu-hook.sh --page-server --address $IP_B --port $PS_PORT",
  copy: "cp -a $IMAGES/. $IMAGES_B/",
  lockB: "$NETLOCK/cli.ts lock --images $IMAGES_B --backend $BACKEND",
  dropAddress: "ip addr del $ADDR dev $DEV_A",
  addAddress: "ip addr add $ADDR dev $DEV_B",
  announce: "arping -U -c 1 -I $DEV_B $IP",
  containerRestore: "$CRIU restore -d -D $IMAGES_B --tcp-established --network-lock skip " +
    "--action-script $NETLOCK/criu-hook.sh --external $VETH_PAIR",
  containerAnnounce: "nsenter --target $PID --net arping -U -c 1 -I eth0 $CONTAINER_IP",
  restore: "$CRIU restore -d -D $IMAGES_B --tcp-established --network-lock skip " +
    "--action-script $NETLOCK/criu-hook.sh",
  unlockA: "$NETLOCK/cli.ts unlock --images $IMAGES",
};

/**
 * Runs one line of the walk-through on a host (none: on the machine, as a
 * copy between hosts). A page server started with `-d` runs on as a
 * daemon holding whatever its parent had: its output goes nowhere, or the
 * pipes would stay open past its parent's exit.
 */
export async function runStep(
  host: TestNetns | undefined,
  argv: string[],
  env: Record<string, string>,
): Promise<{ code: number; out: string }> {
  const full = host ? ["nsenter", `--net=${host.path}`, "--", ...argv] : argv;
  const daemon = argv.includes("page-server") && argv.at(-1) === "-d";
  const output = await new Deno.Command(full[0], {
    args: full.slice(1),
    env,
    stdin: "null",
    stdout: daemon ? "null" : "piped",
    stderr: daemon ? "null" : "piped",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return {
    code: output.code,
    out: daemon ? "" : `${decode(output.stdout)}${decode(output.stderr)}`,
  };
}

/**
 * Runs a restore (`attempt`) again while it fails because the dumped
 * tree's PIDs are still taken (this machine's PID 1 reaps late; users
 * retry, as docs/migration.md says), 50 times at most; its last result.
 */
export async function retriedWhilePidsTaken(
  attempt: () => Promise<{ code: number; out: string }>,
): Promise<{ code: number; out: string }> {
  let result = await attempt();
  for (let i = 0; result.code !== 0 && /File exists/.test(result.out) && i < 50; i++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    result = await attempt();
  }
  return result;
}

/**
 * Stops a page server still waiting on `images` (a run that failed before
 * its dump connected: the daemon would wait for ever).
 */
export async function stopPageServer(images: string): Promise<void> {
  await new Deno.Command("pkill", {
    args: ["-f", `page-server -D ${images} `],
    stdout: "null",
    stderr: "null",
  }).output();
}
