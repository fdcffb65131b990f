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
  // Walk the tree as the kernel would: a packet and its ports.
  const walk = (chain: string, sport: number, dport: number): string[] =>
    chains.get(chain)!.flatMap((spec) => {
      const jump = spec.match(/^-p tcp -m tcp --([sd])port ([0-9]+)(?::([0-9]+))? -j (\S+)$/);
      if (!jump) return [spec];
      const port = jump[1] === "s" ? sport : dport;
      const [lo, hi] = [Number(jump[2]), Number(jump[3] ?? jump[2])];
      return port >= lo && port <= hi ? walk(jump[4], sport, dport) : [];
    });
  const flat = connectionIptablesBody(connections, "ipv4", 0xC114);
  for (const [i, c] of connections.entries()) {
    assert.ok(walk(root, c.remotePort, c.localPort).includes(flat[2 * i]), `incoming ${i}`);
    assert.ok(walk(root, c.localPort, c.remotePort).includes(flat[2 * i + 1]), `outgoing ${i}`);
  }
  // Each drop is in the tree once; a packet of other traffic meets a few rules.
  const drops = [...chains.values()].flat().filter((spec) => spec.endsWith("-j DROP"));
  assert.equal(drops.length, flat.length);
  assert.equal(new Set(drops).size, flat.length);
  const met = (sport: number, dport: number): number => {
    let count = 0;
    const visit = (chain: string) => {
      for (const spec of chains.get(chain)!) {
        count++;
        const jump = spec.match(/^-p tcp -m tcp --([sd])port ([0-9]+)(?::([0-9]+))? -j (\S+)$/);
        if (!jump) continue;
        const port = jump[1] === "s" ? sport : dport;
        if (port >= Number(jump[2]) && port <= Number(jump[3] ?? jump[2])) visit(jump[4]);
      }
    };
    visit(root);
    return count;
  };
  assert.ok(met(5201, 33333) <= 60, `iperf to 33333: ${met(5201, 33333)} rules`);
  assert.ok(met(33333, 80) <= 60, `another client of the server: ${met(33333, 80)} rules`);
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
  assert.ok(Math.max(...[...chains.values()].map((body) => body.length)) <= 8);
});

Deno.test("connectionIptablesBody() drops unmarked packets both ways, as iptables-save prints them", () => {
  const body = connectionIptablesBody(
    [
      { family: "ipv6", local: "::1", localPort: 50000, remote: "::1", remotePort: 7100 },
      { family: "ipv4", local: "10.0.0.1", localPort: 1, remote: "10.0.0.2", remotePort: 2 },
    ],
    "ipv6",
    0xC114,
  );
  assert.deepEqual(body, [
    "-s ::1/128 -d ::1/128 -p tcp -m tcp --sport 7100 --dport 50000 -m mark ! --mark 0xc114 -j DROP",
    "-s ::1/128 -d ::1/128 -p tcp -m tcp --sport 50000 --dport 7100 -m mark ! --mark 0xc114 -j DROP",
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
