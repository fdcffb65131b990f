/**
 * The public types of the library: targets, options and results.
 *
 * @module
 */

import type { Backend, Ipv6Choice, Mode } from "./options.ts";

export type { Backend, Ipv6Choice, Mode };

/**
 * What to lock: a PID (its network namespace), or a namespace file such as
 * `/run/netns/NAME` (a bare `NAME` means `/run/netns/NAME`).
 */
export type Target = number | { pid: number } | { netns: string };

/** The parameters of a lock ruleset (either backend).*/
export interface LockRules {
  /** The lock chain's name (`NETLOCK`; CRIU uses `CRIU`). */
  name: string;
  /** Packets with this mark pass (CRIU's `SOCCR_MARK`, 0xC114). */
  mark: number;
  /**
   * The lock chain's rules (what follows `-A NAME `), written as
   * iptables-save prints them. Without it, the namespace lock's two rules:
   * accept the mark, drop the rest. Connection locks set their DROP rules;
   * `"any"` accepts whatever the chain holds (reading a connection lock
   * without knowing its connections).
   */
  body?: readonly string[] | "any";
  /**
   * The other chains of a connection lock's tree (see
   * `connectionIptablesTree`), named `NAME.ID`, each with its rules.
   */
  subchains?: readonly { name: string; body: readonly string[] }[];
  /**
   * Reading: a lock with any mark counts (status and unlock take a lock by
   * its name, whatever its mark).
   */
  anyMark?: boolean;
  /**
   * An iptables namespace lock that leaves IPv6 open by choice (`--ipv6
   * off`): its IPv4 chain ends with an unreachable rule that says so, so
   * that status can tell it from a lock whose IPv6 half is missing.
   * `undefined` when reading: either form counts.
   */
  ipv4Only?: boolean;
  /**
   * An iptables namespace lock whose last rule queues (`-j NFQUEUE
   * --queue-num N`) what it would drop, for a holder. `"any"` when
   * reading: a lock that drops or queues to any number counts.
   */
  queue?: number | "any";
}

/** An IP family a lock covers. */
export type Family = "ipv4" | "ipv6";

/** Options shared by {@linkcode lockNetwork}, `unlockNetwork` and `getLockStatus`. */
export interface NetlockOptions {
  /** Firewall tool: `iptables` (default), `nftables` or `auto`. */
  backend?: Backend;
  /** `auto` (default), `netns` or `connections`. */
  mode?: Mode;
  /** Packets with this mark pass the lock (default `0xC114`, CRIU's `SOCCR_MARK`). */
  mark?: number;
  /** Name of the lock chain (default `NETLOCK`; CRIU uses `CRIU`). */
  name?: string;
  /** Lock IPv6 too: `auto` (default: when the kernel has IPv6), `on` or `off`. */
  ipv6?: Ipv6Choice;
  /** Allow a namespace lock of netlock's own network namespace. */
  force?: boolean;
  /** Timeout of each spawned tool in milliseconds (default 10000). */
  timeoutMs?: number;
  /** Cancels the operation; running tools are killed. */
  signal?: AbortSignal;
  /** Report the commands and rulesets through `log`, change nothing. */
  dryRun?: boolean;
  /**
   * Status and unlock: also see and remove the locks CRIU itself left behind
   * (iptables chain `CRIU`, nftables tables `inet CRIU-*`).
   */
  criu?: boolean;
  /**
   * Scripts run directly before the rules are applied (`network-lock`) and
   * before they are removed (`network-unlock`), as CRIU runs action scripts.
   * A failing lock script aborts the lock; a failing unlock script is
   * reported in `warnings` and the unlock still happens.
   */
  actionScripts?: string[];
  /** Enter the target's user namespace too, to lock a rootless container without root. */
  userns?: boolean;
  /**
   * Lock only, an iptables namespace lock: what the lock would drop goes to
   * this NFQUEUE queue number instead (`-j NFQUEUE --queue-num N`, never
   * `--queue-bypass`), for a holder that holds it and accepts it all at
   * the unlock (lib/hold, `netlock run --hold`). Without a holder on that
   * queue the kernel drops as the plain lock does. Other locks ignore it.
   */
  queue?: number;
  /**
   * Unlock only: remove every lock of netlock's with this name in the
   * target's namespace (the namespace lock and every connection lock, what
   * {@linkcode listLocks} shows; with `criu`, CRIU's leftovers too), in one
   * transaction. Takes no `mode`.
   */
  all?: boolean;
  /** Receives one line per spawned command and per line of its stderr. */
  log?: (line: string) => void;
}

/** Identity of a target as netlock saw it. */
export interface TargetInfo {
  /** The PID, for PID targets. */
  pid?: number;
  /** The namespace file, for `--netns` targets. */
  path?: string;
  /** The namespace identity, as `readlink /proc/PID/ns/net` prints it. */
  netns: string;
}

/** What every operation reports. */
export interface OperationResult {
  /** The target and its namespace identity. */
  target: TargetInfo;
  /** Whether netlock's lock is in place after the operation. */
  locked: boolean;
  /** Whether this call changed anything. */
  changed: boolean;
  /** `netns` (whole namespace) or `connections`. */
  mode: LockKind;
  /** The backend that holds (or held) the lock. */
  backend: "iptables" | "nftables";
  /** The IP families covered. */
  families: Family[];
  /** The lock name. */
  name: string;
  /** The mark that passes the lock. */
  mark: number;
  /** Number of TCP connections locked (connection mode), else 0. */
  connections: number;
  /** Wall time of the operation in milliseconds. */
  durationMs: number;
  /** Problems that did not stop the operation (a failing unlock action script). */
  warnings?: string[];
  /**
   * Status: the queue an iptables namespace lock that holds sends what it
   * stops to (`run --hold`, the CRIU hook with `NETLOCK_HOLD=1`); absent
   * for a lock that drops.
   */
  queue?: number;
  /**
   * Status and unlock: the kinds of lock found (status) or removed (unlock).
   * In `auto` mode a PID in another namespace has both looked for: its
   * namespace lock (`netns`) and its connection lock (`connections`).
   */
  kinds?: LockKind[];
  /** Unlock with `all`: the names of the locks removed. */
  removed?: string[];
  /** A dry run: nothing was changed; `changed` says whether the call would change anything. */
  dryRun?: boolean;
}

/**
 * A lock's kind: a whole namespace, the TCP connections of one process's
 * tree, or every socket of one process's cgroup v2.
 */
export type LockKind = "netns" | "connections" | "cgroup";

/** One lock {@linkcode listLocks} found. */
export interface LockInfo {
  /** The namespace it is in (and the target, as given). */
  target: TargetInfo;
  /**
   * `netns`, `connections`, `criu` (a lock CRIU left, with `criu`), or
   * `foreign`: a chain or table of a lock's name that is not a netlock lock
   * (netlock leaves it alone).
   */
  kind: LockKind | "criu" | "foreign";
  /** Its chain or table name: `NAME`, `NAME-cPID`, `CRIU`, `CRIU-...`. */
  name: string;
  /** The backend holding it (a lock in both is listed twice). */
  backend: "iptables" | "nftables";
  /** The families it covers. */
  families: Family[];
  /** Connection locks: the process it was made for. */
  pid?: number;
  /** Connection locks: whether that process still exists. */
  alive?: boolean;
  /** Connection locks: how many TCP connections it holds. */
  connections?: number;
  /**
   * Connection locks: how many listening addresses and ports it holds (a
   * client's SYN to one is dropped, not refused); present when it holds any.
   */
  listeners?: number;
  /**
   * iptables locks that hold (NFQUEUE): the queue their drops send to, where
   * a holder keeps what the lock stops. Absent: the lock drops.
   */
  queue?: number;
}

/** CRIU's own locks, found (status) or removed (unlock) with the `criu` option. */
export interface CriuLocks {
  /** Families whose iptables filter table holds CRIU's `CRIU` chain. */
  iptables: Family[];
  /** CRIU's `inet CRIU-*` nftables tables. */
  nftables: string[];
}

/** What `unlockNetwork` reports. */
export interface UnlockResult extends OperationResult {
  /** CRIU's locks this call removed (with the `criu` option). */
  criu?: CriuLocks;
}

/** What `getLockStatus` reports. */
export interface LockStatus extends OperationResult {
  /** `locked`, `unlocked`, or `partial` (some part of a lock is present). */
  state: "locked" | "unlocked" | "partial";
  /** CRIU's locks present (with the `criu` option). */
  criu?: CriuLocks;
}

/**
 * A lock in place. `unlock()` removes it (once; later calls return the first
 * result), and so does leaving a scope with `await using`.
 */
export interface NetworkLock extends OperationResult, AsyncDisposable {
  /** Removes the lock. */
  unlock(): Promise<UnlockResult>;
}
