/**
 * Long-lived TCP endpoints for the connection-mode tests, driven by
 * commands on stdin (one per line; each answered by one line on stdout):
 *
 *   server HOST:PORT        echo server
 *     broadcast TEXT        write TEXT to every accepted connection -> "done"
 *     received              total bytes received so far -> "N"
 *   client HOST PORT N      N connections to the server
 *     send TEXT             write TEXT on every connection -> "done"
 *     check TEXT MS         wait up to MS until every connection received
 *                           exactly TEXT -> "ok", or "got <JSON>" ("!reset" marks a reset)
 */

const encoder = new TextEncoder();
const [mode, ...args] = Deno.args;
const conns: { conn: Deno.Conn; received: string }[] = [];
let totalReceived = 0;

function track(conn: Deno.Conn, echo: boolean): void {
  const entry = { conn, received: "" };
  conns.push(entry);
  (async () => {
    const buffer = new Uint8Array(65536);
    try {
      while (true) {
        const n = await conn.read(buffer);
        if (n === null) break;
        totalReceived += n;
        entry.received += new TextDecoder().decode(buffer.subarray(0, n));
        if (echo) await conn.write(buffer.slice(0, n));
      }
    } catch {
      entry.received += "!reset";
    }
  })();
}

if (mode === "server") {
  const spec = args[0];
  const at = spec.lastIndexOf(":");
  const listener = Deno.listen({ hostname: spec.slice(0, at), port: Number(spec.slice(at + 1)) });
  (async () => {
    for await (const conn of listener) track(conn, true);
  })();
} else if (mode === "client") {
  const [hostname, port, count] = args;
  for (let i = 0; i < Number(count); i++) {
    track(await Deno.connect({ hostname, port: Number(port) }), false);
  }
}
console.log("ready");

for await (
  const line of Deno.stdin.readable.pipeThrough(new TextDecoderStream()).pipeThrough(lines())
) {
  const [command, text, ms] = line.split(" ");
  if (command === "broadcast" || command === "send") {
    await Promise.all(conns.map(({ conn }) => conn.write(encoder.encode(text))));
    console.log("done");
  } else if (command === "received") {
    console.log(String(totalReceived));
  } else if (command === "check") {
    const deadline = Date.now() + Number(ms);
    while (Date.now() < deadline && !conns.every((c) => c.received === text)) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const all = conns.every((c) => c.received === text);
    console.log(all ? "ok" : `got ${JSON.stringify(conns.map((c) => c.received))}`);
  }
}
Deno.exit(0);

function lines(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop() ?? "";
      for (const part of parts) if (part) controller.enqueue(part);
    },
  });
}
