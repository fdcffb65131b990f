import assert from "node:assert/strict";
import { planCriuHook } from "../lib/criu/hook.ts";

const env = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("planCriuHook() locks on network-lock and unlocks on network-unlock", () => {
  assert.deepEqual(
    planCriuHook(
      env({
        CRTOOLS_SCRIPT_ACTION: "network-lock",
        CRTOOLS_INIT_PID: "42",
        NETLOCK_BACKEND: "auto",
        NETLOCK_NAME: "CKPT",
        NETLOCK_MARK: "0x1",
      }),
    ),
    { action: "lock", pid: 42, options: { backend: "auto", name: "CKPT", mark: 1 } },
  );
  assert.equal(
    planCriuHook(env({ CRTOOLS_SCRIPT_ACTION: "network-unlock", CRTOOLS_INIT_PID: "42" })).action,
    "unlock",
  );
});

Deno.test("planCriuHook() ignores every other action, even without a PID", () => {
  for (
    const action of [
      "pre-dump",
      "post-dump",
      "pre-restore",
      "setup-namespaces",
      "post-restore",
      "pre-resume",
      "post-resume",
      "",
    ]
  ) {
    assert.deepEqual(planCriuHook(env({ CRTOOLS_SCRIPT_ACTION: action })), { action: "none" });
  }
});

Deno.test("planCriuHook() refuses a bad PID (INVALID_ENVIRONMENT) and bad options (TypeError)", () => {
  for (const pid of ["", "0", "abc", "12;reboot", "0x10"]) {
    assert.throws(
      () => planCriuHook(env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: pid })),
      {
        code: "INVALID_ENVIRONMENT",
      },
    );
  }
  assert.throws(
    () =>
      planCriuHook(
        env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "1", NETLOCK_NAME: "a b" }),
      ),
    TypeError,
  );
  assert.throws(
    () =>
      planCriuHook(
        env({ CRTOOLS_SCRIPT_ACTION: "network-lock", CRTOOLS_INIT_PID: "1", NETLOCK_MARK: "-1" }),
      ),
    TypeError,
  );
});
