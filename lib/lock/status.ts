/**
 * The status of a target's locks through both backends, in one round of
 * reads: a namespace lock, a process's connection lock, or both, and
 * CRIU's leftovers on request.
 *
 * @module
 */

import { CRIU_IPTABLES_RULES, findCriuNftTables } from "../unlock/criu_locks.ts";
import { iptablesStatus, readIptablesTable } from "../iptables/backend.ts";
import { UNLOCKED_STATE } from "../iptables/lock_state.ts";
import { foreignError } from "../unlock/transaction.ts";
import type { SavedTable } from "../iptables/save_parser.ts";
import { readNftLockTable } from "../nftables/backend.ts";
import { nftLockMark } from "../nftables/lock_state.ts";
import type { Prepared, ResolvedOptions } from "../netns/prepare.ts";
import {
  type BackendName,
  iptablesContext,
  type LockShape,
  missingToolError,
  type NamespaceOutcome,
  nftContext,
  requestedBackend,
} from "../shape/shape.ts";
import type { CriuLocks, Family, LockKind } from "../common/types.ts";

/**
 * Reads the state of the locks of `shapes` (a namespace lock, a process's
 * connection lock, or both) through both backends, in one round of reads,
 * and CRIU's locks with `criu`. The state is the worst found (a half lock
 * is `partial` whatever else is there); backend, kind and connection count
 * are those of the first lock found.
 *
 * @param prepared The probed target.
 * @param opts The validated options.
 * @param shapes The locks to look for, with their kinds.
 * @returns The state, the backend holding the lock, the kinds found.
 */
export async function statusAllBackends(
  prepared: Prepared,
  opts: ResolvedOptions,
  shapes: { kind: LockKind; shape: LockShape }[],
): Promise<NamespaceOutcome> {
  const ipt = iptablesContext(prepared, opts, shapes[0].shape);
  // One iptables-save per family serves every lock looked for.
  const tables = Promise.all(
    prepared.families.map((family) => readIptablesTable(prepared.exec, family)),
  );
  tables.catch(() => {}); // seen (and judged) through each lock's status
  const [criuIpt, criuNft, ...states] = await Promise.allSettled([
    opts.criu
      ? iptablesStatus({ ...ipt, rules: CRIU_IPTABLES_RULES, rulesFor: undefined }, tables)
      : Promise.resolve([]),
    opts.criu ? findCriuNftTables(prepared.exec) : Promise.resolve([]),
    ...shapes.map(({ shape }) => shapeStatus(prepared, opts, shape, tables)),
  ]);
  for (const outcome of [criuIpt, criuNft]) {
    if (outcome.status === "rejected" && !missingToolError(outcome.reason)) throw outcome.reason;
  }
  for (const outcome of states) if (outcome.status === "rejected") throw outcome.reason;
  const found = shapes.map(({ kind }, i) => {
    const state = states[i] as PromiseFulfilledResult<ShapeStatus>;
    return { kind, ...state.value };
  });
  const criu: CriuLocks | undefined = opts.criu
    ? {
      iptables: criuIpt.status === "fulfilled"
        ? prepared.families.filter((_, i) =>
          criuIpt.value[i] && criuIpt.value[i].status !== "unlocked"
        )
        : [],
      nftables: criuNft.status === "fulfilled" ? criuNft.value : [],
    }
    : undefined;
  const present = found.filter((lock) => lock.state !== "unlocked");
  const foreign = found.flatMap((lock) => lock.foreign);
  // Only someone else's chain or table of the name: refuse, naming it.
  if (present.length === 0 && foreign.length > 0 && !hasCriu(criuIpt, criuNft)) {
    throw foreignError(foreign);
  }
  const first = present[0] ?? found[0];
  const state = present.some((lock) => lock.state === "partial")
    ? "partial"
    : present.length > 0
    ? "locked"
    : "unlocked";
  const counted = found.find((lock) => lock.connections !== undefined && lock.state !== "unlocked");
  return {
    changed: false,
    backend: present.length > 0 ? first.backend : requestedBackend(opts),
    state,
    kinds: present.map((lock) => lock.kind),
    ...(present.length > 0 && first.mark !== undefined ? { mark: first.mark } : {}),
    ...(present.length > 0 && first.families ? { families: first.families } : {}),
    ...(foreign.length > 0
      ? { warnings: foreign.map((what) => `${what} is not a netlock lock: left out`) }
      : {}),
    ...(criu ? { criu } : {}),
    ...(counted ? { connections: counted.connections } : {}),
    ...(present.length > 0 && first.queue !== undefined ? { queue: first.queue } : {}),
  };
}

function hasCriu(
  iptables: PromiseSettledResult<{ status: string }[]>,
  nftables: PromiseSettledResult<string[]>,
): boolean {
  return (iptables.status === "fulfilled" && iptables.value.some((s) => s.status !== "unlocked")) ||
    (nftables.status === "fulfilled" && nftables.value.length > 0);
}

interface ShapeStatus {
  state: "locked" | "unlocked" | "partial";
  backend: BackendName;
  connections?: number;
  /** The mark the lock found lets through. */
  mark?: number;
  /** The families it covers, when fewer than the namespace has (`--ipv6 off`). */
  families?: Family[];
  /** The queue a namespace lock that holds sends what it stops to. */
  queue?: number;
  /** Chains and tables of its name that are not netlock locks (left out). */
  foreign: string[];
}

/** One lock's state through both backends (a missing tool counts as no lock). */
async function shapeStatus(
  prepared: Prepared,
  opts: ResolvedOptions,
  shape: LockShape,
  tables: Promise<SavedTable[]>,
): Promise<ShapeStatus> {
  const [iptStates, nftTable] = await Promise.allSettled([
    iptablesStatus(iptablesContext(prepared, opts, shape), tables),
    readNftLockTable(nftContext(prepared, opts, shape)),
  ]);
  for (const outcome of [iptStates, nftTable]) {
    if (outcome.status === "rejected" && !missingToolError(outcome.reason)) throw outcome.reason;
  }
  if (iptStates.status === "rejected" && nftTable.status === "rejected") throw iptStates.reason;
  // A chain or table of the name that netlock did not make is not part of the lock.
  const foreign: string[] = [];
  const states = (iptStates.status === "fulfilled" ? iptStates.value : []).map((state, i) => {
    if (!state.foreign) return state;
    foreign.push(`chain ${shape.name} of table ${NFT_FAMILY[prepared.families[i]]} filter`);
    return UNLOCKED_STATE;
  });
  // A lock that leaves IPv6 open by choice says so in its IPv4 chain.
  const ipv4Only = prepared.families[0] === "ipv4" && states[0]?.status === "locked" &&
    states[0].ipv4Only && states.slice(1).every((state) => state.status === "unlocked");
  const wanted = ipv4Only ? states.slice(0, 1) : states;
  const ipv = wanted.map((state) => state.status);
  const iptState = ipv.length === 0 || ipv.every((s) => s === "unlocked")
    ? "unlocked"
    : ipv.every((s) => s === "locked")
    ? "locked"
    : "partial";
  const read = nftTable.status === "fulfilled" ? nftTable.value : null;
  const foreignTable = shape.nftLock.inspect(read) === "foreign";
  if (foreignTable) foreign.push(`table inet ${shape.name}`);
  const table = foreignTable ? null : read;
  const nft = shape.nftLock.inspect(table);
  const counted = shape.count?.(states, table);
  const mark = nft !== "unlocked" && table ? nftLockMark(table) : states[0]?.mark;
  return {
    state: nft === "locked" || iptState === "locked"
      ? "locked"
      : nft === "partial" || iptState === "partial"
      ? "partial"
      : "unlocked",
    backend: nft !== "unlocked"
      ? "nftables"
      : iptState !== "unlocked"
      ? "iptables"
      : requestedBackend(opts),
    ...(counted === undefined ? {} : { connections: counted }),
    ...(mark === undefined ? {} : { mark }),
    ...(nft === "unlocked" && ipv4Only ? { families: ["ipv4" as const] } : {}),
    ...(nft === "unlocked" && states[0]?.queue !== undefined ? { queue: states[0].queue } : {}),
    foreign,
  };
}

const NFT_FAMILY = { ipv4: "ip", ipv6: "ip6" } as const;
