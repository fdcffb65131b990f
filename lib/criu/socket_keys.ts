/**
 * Keys of what a dump took, to compare what CRIU's images hold with what
 * the hook locked before the freeze: a connection or a listener as one
 * string, whatever the text of its addresses. Pure.
 *
 * @module
 */

import {
  type Connection,
  isWildcardAddress,
  type Listener,
} from "../connections/proc_net_parser.ts";

/**
 * One listener as a key, whatever the text of its address (see
 * {@linkcode connectionKey}); a wildcard in any spelling is `*`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { listenerKey } from "./socket_keys.ts";
 *
 * const any = { family: "ipv6" as const, local: "::", localPort: 80 };
 * assert.equal(listenerKey(any), listenerKey({ ...any, local: "0:0:0:0:0:0:0:0" }));
 * ```
 *
 * @param listener The listener.
 * @returns `listen FAMILY LOCAL LPORT`.
 */
export function listenerKey(listener: Listener): string {
  const local = isWildcardAddress(listener.local) ? "*" : canonicalAddress(listener.local);
  return `listen ${listener.family} ${local} ${listener.localPort}`;
}

/**
 * One connection as a key, whatever the text of its IPv6 addresses
 * (canonical, as URLs write them).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectionKey } from "./socket_keys.ts";
 *
 * const a = { family: "ipv6" as const, local: "fd00:0::1", localPort: 1, remote: "::1", remotePort: 2 };
 * assert.equal(connectionKey(a), connectionKey({ ...a, local: "fd00::1" }));
 * ```
 *
 * @param connection The connection.
 * @returns `LOCAL LPORT REMOTE RPORT`.
 */
export function connectionKey(connection: Connection): string {
  return `${canonicalAddress(connection.local)} ${connection.localPort} ` +
    `${canonicalAddress(connection.remote)} ${connection.remotePort}`;
}

/** An address as URLs write it (IPv6 compressed and lower-case; IPv4 as it is). */
function canonicalAddress(address: string): string {
  return address.includes(":") ? new URL(`http://[${address}]/`).hostname : address;
}
