/**
 * A holder in a process of its own, for the test that kills it mid-lock:
 * `deno run --allow-ffi hold_child.ts NETNS` binds a queue in NETNS, prints
 * `held QUEUE`, and holds until it is killed.
 */
import { holdQueue } from "../../lib/hold/holder.ts";

const holder = await holdQueue(Deno.args[0]);
console.log(`held ${holder.queue}`);
// The holder reads only when asked: a timer keeps this process (and its queue) alive.
setInterval(() => {}, 60_000);
