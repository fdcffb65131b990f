/**
 * runc for the runtime tests: a busybox container (static busybox, `nc -ll
 * -e cat` as its echo server: one process per connection) in a network
 * namespace made beforehand (an external netns path in config.json, as
 * podman/netavark and CRI-O make them) or in the "host's" (no network
 * namespace of its own: the container shares the namespace runc runs in),
 * checkpointed and restored by runc through `criu-netlock` (runc
 * `--criu`), CRIU's RPC (`criu swrk`) and all.
 */
import { criuBin, HOOK, withCriu } from "./criu.ts";
import { IN_CI, integration, must, sh, type TestNetns } from "./netns.ts";

/** netlock's CRIU wrapper for runtimes. */
export const CRIU_NETLOCK = new URL("../../criu-netlock", import.meta.url).pathname;

/** Where Debian's busybox-static puts its binary. */
const BUSYBOX = "/bin/busybox";

/** runc and a static busybox, or why not. */
function findRuntime(): string | undefined {
  const tools: [string, string[]][] = [["runc", ["runc", "--version"]], ["busybox", [
    BUSYBOX,
    "true",
  ]]];
  for (const [tool, argv] of tools) {
    try {
      if (
        !new Deno.Command(argv[0], { args: argv.slice(1), stdout: "null", stderr: "null" })
          .outputSync().success
      ) return `${tool} does not run`;
    } catch {
      return `no ${tool} (apt-get install runc busybox-static)`;
    }
  }
  return undefined;
}

const MISSING = findRuntime();

/** Test options: a runtime test (needs runc and CRIU; never skipped under CI). */
export const withRunc = {
  ...integration,
  ignore: withCriu.ignore || (!IN_CI && MISSING !== undefined),
};
if (withRunc.ignore && !integration.ignore && MISSING) {
  console.error(`runtime tests skipped: ${MISSING}`);
}

let counter = 0;

/** A container: its runc state, bundle and images, and how to drive runc for it. */
export interface Container extends AsyncDisposable {
  id: string;
  /** The image directory of its checkpoints. */
  images: string;
  /** Runs `runc --root ... --criu CRIU ARGS...` (stdio to /dev/null but stderr), in `netns`. */
  runc(args: string[], criu?: string, env?: Record<string, string>): Promise<
    { code: number; stderr: string }
  >;
  /** `runc checkpoint --tcp-established [EXTRA...]` (CRIU: criu-netlock unless `criu`). */
  checkpoint(extra: string[], env?: Record<string, string>, criu?: string): Promise<
    { code: number; stderr: string }
  >;
  /** `runc restore -d --tcp-established` of that checkpoint. */
  restore(env?: Record<string, string>, criu?: string): Promise<{ code: number; stderr: string }>;
}

/**
 * Makes a busybox container bundle and starts it (`runc run -d`): `nc -ll
 * -p PORT -e cat`. `netns`: the network namespace runc runs in (a host's);
 * `joins`: the namespace path config.json names (a pod's), or none (the
 * container shares runc's).
 */
export async function startContainer(
  runIn: TestNetns,
  port: number,
  joins?: string,
): Promise<Container> {
  const dir = await Deno.makeTempDir({ prefix: "nltest-runc-" });
  const id = `nltest-${Deno.pid}-${++counter}`;
  const rootfs = `${dir}/rootfs`;
  for (const sub of ["bin", "proc", "dev", "sys", "tmp", "etc"]) {
    await Deno.mkdir(`${rootfs}/${sub}`, { recursive: true });
  }
  await Deno.copyFile(BUSYBOX, `${rootfs}/bin/busybox`);
  await Deno.chmod(`${rootfs}/bin/busybox`, 0o755);
  for (const applet of ["sh", "nc", "cat", "sleep"]) {
    await Deno.symlink("busybox", `${rootfs}/bin/${applet}`);
  }
  await must(["runc", "spec", "--bundle", dir]);
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  config.root = { path: rootfs, readonly: true };
  config.process.terminal = false;
  // Its stdio is the container's own /dev/null: runc's (a file here) is
  // outside the container, which CRIU cannot dump.
  config.process.args = [
    "sh",
    "-c",
    `exec nc -ll -p ${port} -e cat </dev/null >/dev/null 2>&1`,
  ];
  config.linux.namespaces = config.linux.namespaces
    .filter((ns: { type: string }) => ns.type !== "network")
    .concat(joins ? [{ type: "network", path: joins }] : []);
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2));
  const images = `${dir}/images`;
  const state = `${dir}/state`;
  // runc's stderr goes to a file: a container started (or restored) by it
  // keeps runc's stdio open, and a pipe would never end.
  const errors = `${dir}/runc.err`;
  const runc = async (args: string[], criu = CRIU_NETLOCK, env: Record<string, string> = {}) => {
    const out = await new Deno.Command("nsenter", {
      args: [
        `--net=${runIn.path}`,
        "--",
        "sh",
        "-c",
        'err=$1; shift; exec "$@" 2>"$err"',
        "runc-logged",
        errors,
        "runc",
        "--root",
        state,
        "--criu",
        criu,
        ...args,
      ],
      env: { NETLOCK_CRIU: criuBin(), ...env },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return { code: out.code, stderr: await Deno.readTextFile(errors).catch(() => "") };
  };
  const started = await runc(["run", "-d", "--bundle", dir, id]);
  if (started.code !== 0) throw new Error(`runc run: ${started.stderr}`);
  for (let i = 0; i < 200; i++) {
    const ss = await sh([
      "nsenter",
      `--net=${joins ?? runIn.path}`,
      "ss",
      "-tlnH",
      `sport = :${port}`,
    ]);
    if (ss.stdout.trim() !== "") break;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return {
    id,
    images,
    runc: (args, criu, env) => runc(args, criu, env),
    checkpoint: (extra, env, criu) =>
      runc(["checkpoint", "--tcp-established", ...extra, "--image-path", images, id], criu, env),
    restore: (env, criu) =>
      runc(
        ["restore", "-d", "--tcp-established", "--image-path", images, "--bundle", dir, id],
        criu,
        env,
      ),
    async [Symbol.asyncDispose]() {
      await runc(["delete", "--force", id]);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** A CRIU that skips its lock and runs no hook: what breaks connections (the control). */
export async function criuWithoutLock(): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "nltest-nolock-" });
  const path = `${dir}/criu`;
  await Deno.writeTextFile(
    path,
    `#!/bin/sh\ncase " $* " in *" swrk "*|*" dump "*|*" restore "*) ` +
      `exec ${criuBin()} --network-lock skip "$@";; esac\nexec ${criuBin()} "$@"\n`,
    { mode: 0o755 },
  );
  return { path, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

/** The hook the wrapper hands CRIU (for messages). */
export const HOOK_PATH = HOOK;

/** podman, or why not. */
function findPodman(): string | undefined {
  try {
    const out = new Deno.Command("podman", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync();
    return out.success ? undefined : "podman does not run";
  } catch {
    return "no podman (apt-get install podman)";
  }
}

const NO_PODMAN = findPodman();

/** Test options: a podman test (needs podman and CRIU; never skipped under CI). */
export const withPodman = {
  ...integration,
  ignore: withCriu.ignore || (!IN_CI && (MISSING !== undefined || NO_PODMAN !== undefined)),
};
if (withPodman.ignore && !integration.ignore && NO_PODMAN) {
  console.error(`podman tests skipped: ${NO_PODMAN}`);
}

/** The image the podman tests run: the static busybox alone, imported (no registry). */
const PODMAN_IMAGE = "localhost/nltest-busybox";

/** A podman container, driven with `criu-netlock` installed as `criu` ahead on PATH. */
export interface PodmanContainer extends AsyncDisposable {
  /** Runs `podman ARGS...` with that PATH and `env`. */
  podman(args: string[], env?: Record<string, string>): Promise<{ code: number; stderr: string }>;
  name: string;
}

/**
 * Starts `nc -ll -p PORT -e cat` in a podman container joined to the
 * namespace `joins` (`--network ns:PATH`), with `criu-netlock install`ed
 * into a directory first on podman's PATH (how podman, CRI-O and crun find
 * it). Limits are set below this machine's (podman's defaults are above
 * what it may raise).
 */
export async function startPodmanContainer(
  joins: string,
  port: number,
  installEnv: Record<string, string> = {},
): Promise<PodmanContainer> {
  const dir = await Deno.makeTempDir({ prefix: "nltest-podman-" });
  const bin = `${dir}/bin`;
  await Deno.mkdir(bin);
  // (podman passes its caller's environment to no runtime: the backend is
  // the installed criu's default.)
  const settings = Object.entries(installEnv).map(([name, value]) => `${name}=${value}`);
  await must(["env", `NETLOCK_CRIU=${criuBin()}`, ...settings, CRIU_NETLOCK, "install", bin]);
  const path = `${bin}:${Deno.env.get("PATH")}:/usr/sbin:/sbin`;
  const podman = async (args: string[], env: Record<string, string> = {}) => {
    const out = await new Deno.Command("podman", {
      args,
      env: { PATH: path, ...env },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
  };
  if ((await podman(["image", "exists", PODMAN_IMAGE])).code !== 0) {
    const rootfs = `${dir}/rootfs`;
    await Deno.mkdir(`${rootfs}/bin`, { recursive: true });
    await Deno.copyFile(BUSYBOX, `${rootfs}/bin/busybox`);
    await Deno.chmod(`${rootfs}/bin/busybox`, 0o755);
    for (const applet of ["sh", "nc", "cat", "sleep"]) {
      await Deno.symlink("busybox", `${rootfs}/bin/${applet}`);
    }
    await must(["tar", "-C", rootfs, "-cf", `${dir}/rootfs.tar`, "."]);
    const imported = await podman(["import", `${dir}/rootfs.tar`, PODMAN_IMAGE]);
    if (imported.code !== 0) throw new Error(`podman import: ${imported.stderr}`);
  }
  const name = `nltest-${Deno.pid}-${++counter}`;
  const run = await podman([
    "run",
    "-d",
    "--name",
    name,
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--network",
    `ns:${joins}`,
    PODMAN_IMAGE,
    "nc",
    "-ll",
    "-p",
    String(port),
    "-e",
    "cat",
  ]);
  if (run.code !== 0) throw new Error(`podman run: ${run.stderr}`);
  for (let i = 0; i < 200; i++) {
    const ss = await sh(["nsenter", `--net=${joins}`, "ss", "-tlnH", `sport = :${port}`]);
    if (ss.stdout.trim() !== "") break;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return {
    name,
    podman,
    async [Symbol.asyncDispose]() {
      await podman(["rm", "--force", name]);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
