/**
 * What `netlock rules` prints: the exact texts lock and unlock feed to the
 * tools for the given options. Pure.
 *
 * @module
 */

import {
  connectionLockName,
  renderConnectionTemplate,
  renderNftCgroupLock,
} from "../connections/ruleset.ts";
import { renderIptablesLock, renderIptablesUnlock } from "../iptables/ruleset.ts";
import { renderNftLock, renderNftUnlock } from "../nftables/ruleset.ts";
import type { NetlockOptions } from "../common/types.ts";
import { DEFAULT_MARK, DEFAULT_NAME } from "../common/options.ts";

/**
 * The ruleset text of `netlock rules [lock|unlock]`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { rulesText } from "./rules_text.ts";
 * assert(rulesText({ name: "CRIU" }, "lock").startsWith("*filter\n:CRIU - [0:0]\n"));
 * ```
 *
 * @param options Backend, mode, name and mark.
 * @param action `lock` or `unlock`.
 * @returns The text, ending with a newline.
 */
export function rulesText(options: NetlockOptions, action: "lock" | "unlock"): string {
  const rules = {
    name: options.name ?? DEFAULT_NAME,
    mark: options.mark ?? DEFAULT_MARK,
    ipv4Only: options.ipv6 === "off",
  };
  const nft = (options.backend ?? "iptables") !== "iptables";
  if (options.mode === "cgroup") {
    const table = `${rules.name.slice(0, 24)}-gPID`;
    return action === "lock"
      ? renderNftCgroupLock(table, rules.mark, "/CGROUP", "create").replaceAll(
        "level 1 ",
        "level LEVEL ",
      )
      : renderNftUnlock({ ...rules, name: table });
  }
  if (options.mode === "connections") {
    if (action === "lock") {
      return renderConnectionTemplate(nft ? "nftables" : "iptables", rules.name, rules.mark);
    }
    const name = connectionLockName(rules.name, 0).replace(/-c0$/, "-cPID");
    return nft ? renderNftUnlock({ ...rules, name }) : renderIptablesUnlock({ ...rules, name });
  }
  if (nft) return action === "lock" ? renderNftLock(rules) : renderNftUnlock(rules);
  return action === "lock" ? renderIptablesLock(rules) : renderIptablesUnlock(rules);
}
