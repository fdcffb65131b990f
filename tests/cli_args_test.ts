import assert from "node:assert/strict";
import { parseInvocation, usageMessage } from "../lib/cli/args.ts";
import { rulesText } from "../lib/cli/rules_text.ts";

Deno.test("parseInvocation() reads targets, options and run's command after --", () => {
  const run = parseInvocation([
    "run",
    "-b",
    "nftables",
    "--netns",
    "blue",
    "--",
    "criu",
    "dump",
    "--",
    "-x",
  ]);
  assert.equal(run.kind, "run");
  if (run.kind !== "run") return;
  assert.deepEqual(run.target, { netns: "/run/netns/blue" });
  assert.deepEqual(run.argv, ["criu", "dump", "--", "-x"]);
  assert.equal(run.options.backend, "nftables");

  const lock = parseInvocation([
    "lock",
    "12",
    "--netns",
    "/proc/7/ns/net",
    "--action-script",
    "/a",
    "--action-script",
    "/b",
  ]);
  assert.equal(lock.kind, "targets");
  if (lock.kind !== "targets") return;
  assert.deepEqual(lock.targets, [12, { netns: "/proc/7/ns/net" }]);
  assert.deepEqual(lock.options.actionScripts, ["/a", "/b"]);
});

Deno.test("parseInvocation() refuses what a command does not take", () => {
  assert.throws(() => parseInvocation(["lock", "1", "--", "true"]), /lock takes no '--' command/);
  assert.throws(() => parseInvocation(["run", "1", "2", "--", "true"]), /exactly one target/);
  assert.throws(() => parseInvocation(["run", "1"]), /run needs a command/);
  assert.throws(() => parseInvocation(["criu-hook", "1"]), /criu-hook takes no arguments/);
  assert.throws(() => parseInvocation(["rules", "--netns", "x"]), /rules takes no target/);
  assert.equal(parseInvocation(["criu-hook"]).kind, "hook");
  assert.equal(parseInvocation(["-h"]).kind, "help");
});

Deno.test("parseInvocation() reads list (targets optional) and unlock --all", () => {
  assert.deepEqual(parseInvocation(["list"]), {
    kind: "list",
    targets: [],
    options: LIST_DEFAULTS,
    output: { json: false, quiet: false, verbose: false },
  });
  const list = parseInvocation(["list", "--criu", "--json", "7", "--netns", "blue"]);
  assert.ok(list.kind === "list");
  assert.deepEqual(list.targets, [7, { netns: "/run/netns/blue" }]);
  assert.equal(list.options.criu, true);
  assert.equal(list.output.json, true);
  const all = parseInvocation(["unlock", "--all", "--netns", "blue"]);
  assert.ok(all.kind === "targets" && all.command === "unlock" && all.options.all === true);
  const plain = parseInvocation(["unlock", "1"]);
  assert.ok(plain.kind === "targets" && plain.options.all === undefined);
  // Alone, as list alone: netlock's own namespace, as nsenter sees itself.
  const own = parseInvocation(["unlock", "--all"]);
  assert.ok(own.kind === "targets");
  assert.deepEqual(own.targets, [{ netns: "/proc/self/ns/net" }]);
});

const LIST_DEFAULTS = {
  mode: "auto",
  ipv6: "auto",
  force: false,
  criu: false,
  userns: false,
  dryRun: false,
  actionScripts: [],
};

Deno.test("usageMessage() shortens node:util's messages to one specific line", () => {
  assert.equal(
    usageMessage(new TypeError("Unknown option '-5'. To specify ...")),
    'Invalid PID "-5": expected a decimal number from 1 to 4194304',
  );
  assert.equal(
    usageMessage(new TypeError("Option '--mark <value>' argument missing")),
    "--mark needs a value",
  );
  assert.equal(
    usageMessage(new TypeError("Option '--timeout' argument is ambiguous.\nDid you forget ...")),
    "--timeout got a value starting with '-': write --timeout=VALUE if you mean it",
  );
});

Deno.test("rulesText() prints each backend's and mode's text", () => {
  assert.match(rulesText({}, "lock"), /^\*filter\n:NETLOCK - \[0:0\]\n/);
  assert.match(rulesText({ backend: "nftables" }, "lock"), /^create table inet NETLOCK\n/);
  assert.equal(rulesText({ backend: "auto" }, "unlock"), "delete table inet NETLOCK\n");
  assert.match(rulesText({ mode: "connections" }, "lock"), /-A NETLOCK-cPID -s REMOTE -d LOCAL/);
  assert.match(
    rulesText({ mode: "connections", backend: "nftables" }, "unlock"),
    /^delete table inet NETLOCK-cPID\n$/,
  );
});

Deno.test("parseInvocation(): run --hold holds an iptables namespace lock, and only run takes it", () => {
  const run = parseInvocation(["run", "--hold", "12", "--", "true"]);
  assert(run.kind === "run" && run.hold);
  const plain = parseInvocation(["run", "12", "--", "true"]);
  assert(plain.kind === "run" && !plain.hold);
  for (
    const [args, message] of [
      [
        ["run", "--hold", "-b", "nftables", "12", "--", "true"],
        /--hold holds with the iptables backend/,
      ],
      [
        ["run", "--hold", "--mode", "connections", "12", "--", "true"],
        /--hold holds a namespace lock/,
      ],
      [["lock", "--hold", "12"], /lock takes no --hold/],
    ] as const
  ) {
    assert.throws(() => parseInvocation([...args]), (error) => message.test(usageMessage(error)));
  }
});

Deno.test("parseInvocation(): lock and unlock --images DIR, one target or netlock's own namespace", () => {
  const own = parseInvocation(["lock", "--images", "/srv/images", "-b", "nftables", "--json"]);
  assert.equal(own.kind, "images");
  if (own.kind !== "images") return;
  assert.deepEqual(
    [own.command, own.images, own.target, own.options.backend, own.output.json],
    ["lock", "/srv/images", { netns: "/proc/self/ns/net" }, "nftables", true],
  );
  assert.equal(own.options.mode, undefined);
  const pod = parseInvocation(["unlock", "--images", "d", "--netns", "pod"]);
  assert.ok(pod.kind === "images" && pod.command === "unlock");
  assert.deepEqual(pod.kind === "images" && pod.target, { netns: "/run/netns/pod" });
  for (
    const [args, message] of [
      [["lock", "--images", "d", "--mode", "netns"], /it takes no --mode/],
      [["unlock", "--images", "d", "--all"], /it takes no --all/],
      [["lock", "--images", "d", "--dry-run"], /it takes no --dry-run/],
      [["lock", "--images", "d", "1", "2"], /--images takes one target/],
      [["lock", "--images", ""], /needs a CRIU image directory/],
      [
        ["status", "--images", "d", "1"],
        /status takes no --images \(--images is for lock and unlock\)/,
      ],
      [["run", "--images", "d", "1", "--", "true"], /run takes no --images/],
    ] as const
  ) {
    assert.throws(() => parseInvocation([...args]), message, args.join(" "));
  }
});
