/**
 * The peer of a process tree CRIU dumps: outside the tree, it keeps sending
 * on every connection all along and checks what comes back.
 *
 *   echo_peer.ts HOST PORT CONNECTIONS PAUSE_MS
 *
 * Opens CONNECTIONS connections to an echo server, then on each sends a
 * counter pattern (byte i is i % 251) in 1 KiB chunks, one chunk per
 * PAUSE_MS, while it reads the echo and checks it byte for byte. Prints
 * "connected" once every connection is up, and "progress N" as the echoed
 * total grows (at most every 100 ms), "broken I" as soon as connection I
 * fails (a reset, a short echo, a close). The line "stop" on stdin ends the
 * sending; once every byte sent came back (30 s at most), it prints a last
 * JSON line: {connections, sent, echoed, ok, resets, errors, maxSilenceMs,
 * maxWaitMs, medianWaitMs}: maxSilenceMs the longest a connection went
 * without an echo while sending (the outage its user felt: the pause
 * between chunks included), maxWaitMs the longest a chunk waited for its
 * whole echo (from its write), on any connection, and medianWaitMs the
 * median over connections of each one's longest wait.
 */
const [host, port, connectionsText, pauseText] = Deno.args;
const connections = Number(connectionsText);
const pause = Number(pauseText);
const CHUNK = 1024;

let stopped = false;
let echoedTotal = 0;
let lastReport = 0;
const conns = [];
// In batches: a thousand connects at once would overflow a small accept queue.
for (let i = 0; i < connections; i += 100) {
  const batch = Math.min(100, connections - i);
  conns.push(
    ...await Promise.all(
      Array.from({ length: batch }, () => Deno.connect({ hostname: host, port: Number(port) })),
    ),
  );
}
console.log("connected");

(async () => {
  const reader = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("stop\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  stopped = true;
})();

const results = await Promise.all(conns.map(async (conn, index) => {
  let resets = 0;
  let error = "";
  let sent = 0;
  let echoed = 0;
  let maxSilence = 0;
  let maxWait = 0;
  // The chunks written and not yet echoed whole: where each ends, and when it was written.
  const unechoed: { end: number; at: number }[] = [];
  let lastEcho = performance.now();
  let sending = true;
  const send = (async () => {
    const chunk = new Uint8Array(CHUNK);
    // Spread the connections' chunks over the pause.
    await new Promise((resolve) => setTimeout(resolve, (pause * index) / connections));
    while (!stopped) {
      for (let i = 0; i < CHUNK; i++) chunk[i] = (sent + i) % 251;
      let written = 0;
      unechoed.push({ end: sent + CHUNK, at: performance.now() });
      while (written < CHUNK) written += await conn.write(chunk.subarray(written));
      sent += CHUNK;
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
    sending = false;
  })();
  let done = false;
  const receive = (async () => {
    const buffer = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buffer).catch((e) => {
        if (done) return null;
        throw e;
      });
      if (n === null) {
        if (done) return;
        throw new Error(`closed after ${echoed} bytes`);
      }
      const now = performance.now();
      if (sending) maxSilence = Math.max(maxSilence, now - lastEcho);
      lastEcho = now;
      for (let i = 0; i < n; i++) {
        if (buffer[i] !== (echoed + i) % 251) throw new Error(`byte ${echoed + i} is ${buffer[i]}`);
      }
      echoed += n;
      echoedTotal += n;
      while (unechoed.length && unechoed[0].end <= echoed) {
        maxWait = Math.max(maxWait, now - unechoed.shift()!.at);
      }
      if (now - lastReport > 100) {
        lastReport = now;
        console.log(`progress ${echoedTotal}`);
      }
    }
  })();
  // Once the sending stopped: every byte back within 30 s, then the connection closes.
  const complete = (async () => {
    await send;
    const deadline = performance.now() + 30_000;
    while (echoed < sent && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (echoed < sent) throw new Error(`no full echo within 30 s of stop (${echoed} of ${sent})`);
    done = true;
    conn.close();
  })();
  complete.catch(() => {}); // seen below, or moot after a reset
  send.catch(() => {});
  try {
    await Promise.race([Promise.all([receive, complete]), receive]);
    await complete;
  } catch (e) {
    if (e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe) resets++;
    error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    // At once, not only in the verdict: a reset is told from silence.
    console.log(`broken ${index}`);
  }
  if (!done) {
    try {
      conn.close();
    } catch { /* closed */ }
  }
  return { sent, echoed, resets, error, maxSilence, maxWait };
}));
console.log(JSON.stringify({
  connections,
  sent: results.reduce((sum, r) => sum + r.sent, 0),
  echoed: results.reduce((sum, r) => sum + r.echoed, 0),
  ok: results.every((r) => r.echoed === r.sent && r.error === ""),
  resets: results.reduce((sum, r) => sum + r.resets, 0),
  errors: [...new Set(results.map((r) => r.error).filter(Boolean))].slice(0, 3),
  maxSilenceMs: Math.round(Math.max(...results.map((r) => r.maxSilence))),
  maxWaitMs: Math.round(Math.max(...results.map((r) => r.maxWait))),
  medianWaitMs: Math.round(
    results.map((r) => r.maxWait).sort((a, b) => a - b)[Math.floor(results.length / 2)],
  ),
}));
Deno.exit(0);
