/**
 * What holding saves a peer (issue 33): a peer in a namespace sends one
 * byte every 20 ms on a loopback connection to an echo server there and
 * measures its longest wait for an echo, while `netlock run [--hold]
 * --netns NS -- sleep 0.5` locks the namespace in the middle; rounds
 * interleaved, medians. With a lock that drops, a segment sent during the
 * lock waits for TCP's retransmission timeout (200 ms at least, doubling);
 * with `--hold` it goes on at the unlock. A client that connects during
 * the lock (started by the command) shows the same for a SYN, whose retry
 * comes 1 s after it.
 *
 *   deno run -A bench/hold.ts [ROUNDS] [SECONDS,...]   (default 10, 0.1,0.3,0.5)
 *
 * @module
 */

import { cli, createNetns, startServer, type TestNetns } from "../tests/helpers/netns.ts";
import { lineReader } from "../tests/helpers/lines.ts";
import { median } from "./measure.ts";

const PORT = 7700;
const PEER = "import socket,time,select\ns=socket.create_connection(('127.0.0.1',7700))\n" +
  "print('ready',flush=True)\nend=time.time()+2.5\nlast=time.time()\nworst=0\nnext_send=0\n" +
  "while time.time()<end:\n  now=time.time()\n  if now>=next_send:\n    s.send(b'x')\n" +
  "    next_send=now+0.02\n  r,_,_=select.select([s],[],[],0.005)\n  if r:\n    s.recv(4096)\n" +
  "    t=time.time()\n    worst=max(worst,t-last)\n    last=t\nprint(int(worst*1000),flush=True)\n";

const CLIENT = "import socket,time\ns=socket.create_connection(('127.0.0.1',7700),timeout=10)\n" +
  "print(int(time.time()*1000),flush=True)";

/** One round's figures (ms). */
interface Sample {
  /** The peer's longest wait for an echo. */
  silence: number;
  /** `netlock run`'s wall time. */
  run: number;
  /** How long after the command's end a client that connected during the lock connected. */
  connect: number;
}

function python(netns: TestNetns, code: string): Deno.ChildProcess {
  return new Deno.Command("nsenter", {
    args: [`--net=${netns.path}`, "--", "python3", "-c", code],
    stdout: "piped",
    stdin: "null",
  }).spawn();
}

/** One round: the peer's longest silence and the run's wall time (ms). */
async function round(
  netns: TestNetns,
  hold: boolean,
  seconds: string,
): Promise<Sample> {
  const peer = python(netns, PEER);
  const lines = lineReader(peer.stdout);
  if (await lines.next() !== "ready") throw new Error("the peer did not connect");
  await new Promise((resolve) => setTimeout(resolve, 500));
  const out = await Deno.makeTempFile();
  // The command: a client that connects during the lock (its connect time
  // into a file), then the sleep, then its own end.
  const script = `nsenter --net=${netns.path} -- python3 -c "$0" >${out} 2>&1 & ` +
    `sleep ${seconds}; date +%s%3N`;
  const started = performance.now();
  const result = await cli(
    [
      "run",
      "-q",
      ...(hold ? ["--hold"] : []),
      "--netns",
      netns.path,
      "--",
      "sh",
      "-c",
      script,
      CLIENT,
    ],
    { permissions: ["--allow-run=nsenter,sh", "--allow-ffi"] },
  );
  const run = performance.now() - started;
  if (result.code !== 0) throw new Error(`netlock run failed: ${result.stderr}`);
  const silence = Number(await lines.next());
  await peer.status;
  await lines.drain();
  const connected = Number((await Deno.readTextFile(out)).trim());
  await Deno.remove(out);
  return { silence, run, connect: connected - Number(result.stdout.trim()) };
}

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? "10");
  const durations = (Deno.args[1] ?? "0.1,0.3,0.5").split(",");
  await using netns = await createNetns();
  await using _server = await startServer(netns, [`127.0.0.1:${PORT}`]);
  const samples = new Map<string, Sample[]>();
  const add = (key: string, sample: Sample) =>
    samples.set(key, [...samples.get(key) ?? [], sample]);
  for (let i = 0; i < rounds; i++) {
    console.error(`  round ${i + 1}/${rounds}`);
    for (const seconds of durations) {
      add(`${seconds} drops`, await round(netns, false, seconds));
      add(`${seconds} --hold`, await round(netns, true, seconds));
    }
  }
  console.log(
    "| `netlock run -- sleep S` | lock | peer's longest silence | a new client connects after the command | run's wall time |",
  );
  console.log("| ---: | --- | ---: | ---: | ---: |");
  for (const [key, list] of samples) {
    const [seconds, lock] = key.split(" ");
    const silence = median(list.map((s) => s.silence));
    const run = median(list.map((s) => s.run));
    const connect = median(list.map((s) => s.connect));
    console.log(
      `| ${seconds} s | ${lock} | ${silence} ms | ${connect} ms | ${run.toFixed(0)} ms |`,
    );
  }
  console.log(`(${rounds} rounds, interleaved, medians; port ${PORT})`);
}
