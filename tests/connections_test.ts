import assert from "node:assert/strict";
import {
  formatIpv6,
  parseProcNetTcp,
  parseSocketInodes,
  selectConnections,
} from "../lib/connections/proc_net_parser.ts";
import {
  connectionIptablesBody,
  connectionIptablesTree,
  connectionLockName,
  listenerSetElements,
  renderIptablesConnectionAdd,
  renderNftConnectionAdd,
  renderNftConnectionLock,
} from "../lib/connections/ruleset.ts";

const TCP =
  "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
  "   0: 0100007F:1BBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0\n" +
  "   1: 0100007F:C350 0100007F:1BBC 01 00000000:00000000 00:00000000 00000000     0        0 101 1 0 20 4 30 10 -1\n" +
  "   2: 0201000A:C351 0101000A:0050 08 00000000:00000000 00:00000000 00000000     0        0 102 1 0 20 4 30 10 -1\n";
const TCP6 =
  "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
  // ::1 port 50000 -> ::1 port 7100
  "   0: 00000000000000000000000001000000:C350 00000000000000000000000001000000:1BBC 01 00000000:00000000 00:00000000 00000000     0        0 200 1 0 20 4 30 10 -1\n" +
  // ::ffff:127.0.0.1 port 50001 -> ::ffff:127.0.0.1 port 7100 (an IPv4 peer on an IPv6 socket)
  "   1: 0000000000000000FFFF00000100007F:C351 0000000000000000FFFF00000100007F:1BBC 01 00000000:00000000 00:00000000 00000000     0        0 201 1 0 20 4 30 10 -1\n" +
  // fe80::1:2 port 50002 -> 2001:db8::ff port 443
  "   2: 000080FE000000000000000002000100:C352 B80D01200000000000000000FF000000:01BB 01 00000000:00000000 00:00000000 00000000     0        0 202 1 0 20 4 30 10 -1\n";

Deno.test("parseProcNetTcp() decodes the kernel's little-endian words", () => {
  const entries = parseProcNetTcp(TCP + TCP6);
  assert.equal(entries.length, 6);
  assert.deepEqual(entries[2], {
    family: "ipv4",
    local: "10.0.1.2",
    localPort: 50001,
    remote: "10.0.1.1",
    remotePort: 80,
    state: "08",
    inode: "102",
  });
  assert.equal(entries[3].local, "::1");
  assert.equal(entries[3].family, "ipv6");
  assert.deepEqual([entries[4].family, entries[4].local, entries[4].remote], [
    "ipv4",
    "127.0.0.1",
    "127.0.0.1",
  ]);
  assert.deepEqual([entries[5].local, entries[5].remote, entries[5].remotePort], [
    "fe80::1:2",
    "2001:db8::ff",
    443,
  ]);
});

Deno.test("selectConnections() keeps the process's sockets with a peer, not LISTEN, once each", () => {
  const entries = parseProcNetTcp(TCP + TCP6);
  const inodes = parseSocketInodes(
    "socket:[100]\nsocket:[101]\nsocket:[201]\nsocket:[202]\npipe:[9]\n",
  );
  const connections = selectConnections([...entries, entries[1]], inodes);
  assert.deepEqual(
    connections.map((c) => `${c.family} ${c.local}:${c.localPort} ${c.remote}:${c.remotePort}`),
    [
      "ipv4 127.0.0.1:50000 127.0.0.1:7100",
      "ipv4 127.0.0.1:50001 127.0.0.1:7100",
      "ipv6 fe80::1:2:50002 2001:db8::ff:443",
    ],
  );
});

Deno.test("formatIpv6() compresses like inet_ntop", () => {
  const bytes = (groups: number[]) => new Uint8Array(groups.flatMap((g) => [g >> 8, g & 0xff]));
  assert.equal(formatIpv6(bytes([0, 0, 0, 0, 0, 0, 0, 0])), "::");
  assert.equal(formatIpv6(bytes([0x2001, 0xdb8, 0, 0, 1, 0, 0, 1])), "2001:db8::1:0:0:1");
  assert.equal(formatIpv6(bytes([0x2001, 0xdb8, 0, 1, 1, 1, 1, 1])), "2001:db8:0:1:1:1:1:1");
  assert.equal(formatIpv6(bytes([0xfe80, 0, 0, 0, 0, 0, 0, 0])), "fe80::");
});

Deno.test("connectionLockName() fits iptables' 28 characters with a tree chain's .ID", () => {
  assert.equal(connectionLockName("NETLOCK", 4194303), "NETLOCK-c4194303");
  const long = connectionLockName("A".repeat(28), 4194303);
  assert.equal(long.length, 22);
  assert.ok(long.endsWith("-c4194303"));
});

Deno.test("connectionIptablesTree() files every drop once, under the port it is met with", () => {
  // A server on port 80 with 300 clients, and a client with 300 connections of its own.
  const connections = [
    ...Array.from({ length: 300 }, (_, i) => ({
      family: "ipv4" as const,
      local: "10.0.0.1",
      localPort: 80,
      remote: `10.0.${i >> 8}.${i & 255}`,
      remotePort: 40000 + i,
    })),
    ...Array.from({ length: 300 }, (_, i) => ({
      family: "ipv4" as const,
      local: "10.0.0.1",
      localPort: 50000 + i,
      remote: "10.9.9.9",
      remotePort: 443,
    })),
  ];
  const root = "NETLOCK-c4194303";
  const tree = connectionIptablesTree(connections, "ipv4", 0xC114, root);
  const chains = new Map([
    [root, tree.body],
    ...tree.subchains.map((c) => [c.name, c.body] as const),
  ]);
  assert.ok([...chains.keys()].every((name) => name.length <= 28), "names fit iptables");
  const [marked, ...flat] = connectionIptablesBody(connections, "ipv4", 0xC114);
  // Marked packets return before any drop (the root's first rule), as in a flat lock.
  assert.equal(tree.body[0], marked);
  // Each drop is in the tree once.
  const drops = [...chains.values()].flat().filter((spec) => spec.endsWith("-j DROP"));
  assert.equal(drops.length, flat.length);
  // Walk the tree as the kernel would, for an unmarked packet: whether it is
  // dropped, and how many rules it met.
  const packet = (src: string, dst: string, sport: number, dport: number) => {
    let met = 0;
    const visit = (chain: string): boolean => {
      for (const spec of chains.get(chain)!) {
        met++;
        const cover = spec.match(/^-p tcp -m multiport ! --ports ([0-9,]+) -j RETURN$/);
        if (cover) {
          const ports = cover[1].split(",").map(Number);
          if (!ports.includes(sport) && !ports.includes(dport)) return false;
          continue;
        }
        const rule = spec.match(
          /^(?:-s (\S+)\/32 -d (\S+)\/32 )?(?:-p tcp -m tcp (?:--sport ([0-9:]+) ?)?(?:--dport ([0-9:]+) )?)?(?:-m mark --mark \S+ )?-j (\S+)$/,
        );
        assert.ok(rule, `a rule the walk knows: ${spec}`);
        const [, s, d, sports, dports, target] = rule;
        const within = (port: number, range?: string) => {
          if (range === undefined) return true;
          const [lo, hi = lo] = range.split(":").map(Number);
          return port >= lo && port <= hi;
        };
        if (target === "RETURN") continue; // the marked return: this packet is unmarked
        if (s !== undefined && (s !== src || d !== dst)) continue;
        if (!within(sport, sports) || !within(dport, dports)) continue;
        if (target === "DROP" || visit(target)) return true;
      }
      return false;
    };
    return { dropped: visit(root), met };
  };
  for (const [i, c] of connections.entries()) {
    assert.ok(packet(c.remote, c.local, c.remotePort, c.localPort).dropped, `incoming ${i}`);
    assert.ok(packet(c.local, c.remote, c.localPort, c.remotePort).dropped, `outgoing ${i}`);
  }
  // Other traffic passes, meeting a few dozen rules.
  const iperf = packet("10.0.0.1", "10.0.0.2", 5201, 33333);
  const client = packet("10.0.7.7", "10.0.0.1", 33333, 80);
  const sameHost = packet("10.9.9.9", "10.0.0.1", 443, 50000 + 400);
  for (const [what, walked] of Object.entries({ iperf, client, sameHost })) {
    assert.ok(!walked.dropped, `${what} passes`);
    assert.ok(walked.met <= 100, `${what}: ${walked.met} rules`);
  }
  // The pair's other services leave its chain after one rule (its drops
  // all have port 443): the root's rules and that one, no port tree.
  const otherService = packet("10.9.9.9", "10.0.0.1", 22, 50100);
  assert.ok(!otherService.dropped);
  assert.ok(
    otherService.met <= tree.body.length + 1 && otherService.met < sameHost.met,
    `the pair's other traffic: ${otherService.met} rules`,
  );
});

Deno.test("connectionIptablesTree() stays within the 16 jumps nf_tables follows, at 10,000 connections", () => {
  const connections = Array.from({ length: 10_000 }, (_, i) => ({
    family: "ipv4" as const,
    local: "127.0.0.1",
    localPort: i < 5000 ? 9000 : 20000 + i,
    remote: "127.0.0.1",
    remotePort: i < 5000 ? 30000 + i : 9000,
  }));
  const root = "NETLOCK-c4194303";
  const tree = connectionIptablesTree(connections, "ipv4", 0xC114, root);
  const chains = new Map([
    [root, tree.body],
    ...tree.subchains.map((c) => [c.name, c.body] as const),
  ]);
  const depth = (chain: string): number =>
    1 + Math.max(
      0,
      ...chains.get(chain)!.flatMap((spec) => {
        const target = spec.match(/ -j (NETLOCK-\S+)$/)?.[1];
        return target ? [depth(target)] : [];
      }),
    );
  // INPUT's jump to the root is one more.
  assert.ok(depth(root) + 1 <= 16, `${depth(root) + 1} jumps deep`);
  // A chain holds at most 64 drops or 16 jumps (the root one rule more: the marked return).
  assert.ok(Math.max(...[...chains.values()].map((body) => body.length)) <= 65);
  assert.ok(tree.subchains.length < 1000, `${tree.subchains.length} chains`);
});

Deno.test("connectionIptablesBody() lets marked packets return, then drops both ways, as iptables-save prints them", () => {
  const body = connectionIptablesBody(
    [
      { family: "ipv6", local: "::1", localPort: 50000, remote: "::1", remotePort: 7100 },
      { family: "ipv4", local: "10.0.0.1", localPort: 1, remote: "10.0.0.2", remotePort: 2 },
    ],
    "ipv6",
    0xC114,
  );
  assert.deepEqual(body, [
    "-m mark --mark 0xc114 -j RETURN",
    "-s ::1/128 -d ::1/128 -p tcp -m tcp --sport 7100 --dport 50000 -j DROP",
    "-s ::1/128 -d ::1/128 -p tcp -m tcp --sport 50000 --dport 7100 -j DROP",
  ]);
});

Deno.test("renderNftConnectionLock() is one batch: table, sets, chains and every element", () => {
  const connections = Array.from({ length: 2500 }, (_, i) => ({
    family: "ipv4" as const,
    local: "10.0.0.1",
    localPort: 10000 + i,
    remote: "10.0.0.2",
    remotePort: 80,
  }));
  const script = renderNftConnectionLock("NETLOCK-c9", 0xC114, connections, "replace");
  assert.ok(script.startsWith("add table inet NETLOCK-c9\ndelete table inet NETLOCK-c9\n"));
  assert.match(
    script,
    /meta mark != 0xc114 ip daddr \. tcp dport \. ip saddr \. tcp sport @conn4 drop/,
  );
  assert.equal(script.match(/^add element inet NETLOCK-c9 conn4 /gm)?.length, 3);
  assert.equal(script.match(/10\.0\.0\.2 \. 80 \. 10\.0\.0\.1 \. /g)?.length, 2500);
});

Deno.test("a connection lock drops the SYNs of the listeners it is given, unmarked, in both backends", () => {
  const listeners = [
    { family: "ipv4" as const, local: "198.18.0.1", localPort: 80 },
    { family: "ipv6" as const, local: "0:0:0:0:0:0:0:0", localPort: 443 },
    { family: "ipv4" as const, local: "0.0.0.0", localPort: 443 },
  ];
  // iptables: at the end of the root chain, a wildcard without -d; `::` in both families.
  const v4 = connectionIptablesTree([], "ipv4", 0xC114, "NETLOCK-c7", listeners).body;
  assert.deepEqual(v4, [
    "-m mark --mark 0xc114 -j RETURN",
    "-d 198.18.0.1/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP",
    "-p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP",
    "-p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP",
  ]);
  const v6 = connectionIptablesTree([], "ipv6", 0xC114, "NETLOCK-c7", listeners).body;
  assert.deepEqual(v6.slice(1), [
    "-p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP",
  ]);
  assert.equal(
    renderIptablesConnectionAdd("NETLOCK-c7", [], "ipv4", listeners.slice(0, 1)),
    "*filter\n-A NETLOCK-c7 -d 198.18.0.1/32 -p tcp -m tcp --dport 80 " +
      "--tcp-flags FIN,SYN,RST,ACK SYN -j DROP\nCOMMIT\n",
  );
  // nftables: three sets, one SYN drop each in the input chain.
  assert.deepEqual(listenerSetElements(listeners), {
    listen4: ["198.18.0.1 80"],
    listen6: [],
    listenany: ["443"],
  });
  const script = renderNftConnectionLock("NETLOCK-c7", 0xC114, [], "create", listeners);
  assert.match(
    script,
    /tcp flags & \(fin \| syn \| rst \| ack\) == syn meta mark != 0xc114 ip daddr \. tcp dport @listen4 drop/,
  );
  assert.match(script, /meta mark != 0xc114 tcp dport @listenany drop/);
  assert.ok(script.endsWith(
    "add element inet NETLOCK-c7 listen4 { 198.18.0.1 . 80 }\n" +
      "add element inet NETLOCK-c7 listenany { 443 }\n",
  ));
  assert.equal(renderNftConnectionAdd("NETLOCK-c7", [], []), "");
});
