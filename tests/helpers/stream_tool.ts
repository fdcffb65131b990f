/**
 * A TCP stream with a checkable pattern, for the "nothing lost" tests:
 *
 *   receive HOST:PORT BYTES   accept one connection, read BYTES, check that
 *                             byte i is i % 251; prints "progress N" as it
 *                             goes and a final JSON line {bytes, ok, error}
 *   send HOST PORT BYTES MS   send BYTES of the pattern in 64 KiB chunks,
 *                             pausing MS ms between chunks
 */
const [mode, ...args] = Deno.args;
const CHUNK = 65536;

if (mode === "receive") {
  const [spec, total] = args;
  const at = spec.lastIndexOf(":");
  const listener = Deno.listen({ hostname: spec.slice(0, at), port: Number(spec.slice(at + 1)) });
  console.log("ready");
  const conn = await listener.accept();
  listener.close();
  let received = 0;
  let ok = true;
  let error = "";
  let nextReport = 262144;
  const buffer = new Uint8Array(CHUNK);
  try {
    while (received < Number(total)) {
      const n = await conn.read(buffer);
      if (n === null) break;
      for (let i = 0; i < n; i++) {
        if (buffer[i] !== (received + i) % 251) {
          ok = false;
          error ||= `byte ${received + i} is ${buffer[i]}`;
        }
      }
      received += n;
      if (received >= nextReport) {
        console.log(`progress ${received}`);
        nextReport += 262144;
      }
    }
  } catch (e) {
    ok = false;
    error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  }
  conn.close();
  console.log(JSON.stringify({ bytes: received, ok: ok && received === Number(total), error }));
} else if (mode === "send") {
  const [hostname, port, total, pause] = args;
  const conn = await Deno.connect({ hostname, port: Number(port) });
  let sent = 0;
  const chunk = new Uint8Array(CHUNK);
  while (sent < Number(total)) {
    const size = Math.min(CHUNK, Number(total) - sent);
    for (let i = 0; i < size; i++) chunk[i] = (sent + i) % 251;
    let written = 0;
    while (written < size) written += await conn.write(chunk.subarray(written, size));
    sent += size;
    await new Promise((resolve) => setTimeout(resolve, Number(pause)));
  }
  await conn.closeWrite();
  // Wait for the receiver to close, so that every byte was taken.
  await conn.read(new Uint8Array(1)).catch(() => null);
  conn.close();
  console.log(JSON.stringify({ sent }));
}
