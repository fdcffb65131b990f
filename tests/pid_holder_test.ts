/**
 * The test helper that holds a PID (tests/helpers/pid_holder.py) where the
 * PIDs wrap. A holder asked for a PID within 100 of pid_max could not step
 * ns_last_pid past it (the kernel refuses pid_max or more): it died after
 * its child had taken the PID, and that child, holding the holder's
 * stdout, kept the test waiting for ever (a real-CRIU fault test in a
 * stress run, PID 32687 of pid_max 32768).
 */
import assert from "node:assert/strict";
import { holdPid } from "./helpers/criu.ts";
import { integration } from "./helpers/netns.ts";

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The highest PID within 100 of pid_max that no process or thread has. */
function freePidNearMax(): number {
  const max = Number(Deno.readTextFileSync("/proc/sys/kernel/pid_max"));
  for (let pid = max - 1; pid > max - 100; pid--) {
    if (!exists(`/proc/${pid}`)) return pid;
  }
  throw new Error(`no free PID within 100 of pid_max ${max}`);
}

for (const mode of ["live", "zombie"] as const) {
  Deno.test({
    ...integration,
    name: `holdPid() holds a PID within 100 of pid_max (${mode}), then frees it`,
    async fn() {
      const pid = freePidNearMax();
      // A holder that died leaves its child on the PID, holding the pipe
      // holdPid reads: stop that child, so that the test fails, not hangs.
      const watchdog = setTimeout(() => {
        const cmdline = (() => {
          try {
            return Deno.readTextFileSync(`/proc/${pid}/cmdline`);
          } catch {
            return "";
          }
        })();
        if (cmdline.includes("pid_holder.py")) Deno.kill(pid, "SIGKILL");
      }, 20_000);
      {
        await using _held = await holdPid(pid, mode).finally(() => clearTimeout(watchdog));
        const state = Deno.readTextFileSync(`/proc/${pid}/status`).match(/^State:\s+(\S)/m)?.[1];
        assert.equal(state, mode === "live" ? "S" : "Z");
        const next = Number(Deno.readTextFileSync("/proc/sys/kernel/ns_last_pid"));
        assert.ok(next < pid, `the next PIDs wrap past ${pid}'s neighbours (ns_last_pid ${next})`);
      }
      assert.equal(exists(`/proc/${pid}`), false, `PID ${pid} is free again`);
    },
  });
}
