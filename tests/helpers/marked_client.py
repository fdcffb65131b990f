"""Opens connections whose packets carry a mark (SO_MARK, as CRIU's own
sockets carry 0xC114), so that they pass netlock's lock: what a tree
accepts after its listener was locked (its SYN marked), e.g. before a freeze.

    marked_client.py HOST PORT N MARK

Prints "connected" once the N connections are up, then holds them until
stdin closes.
"""
import socket, sys

host, port, count, mark = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 0)
SO_MARK = 36
conns = []
for _ in range(count):
    conn = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    conn.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    conn.settimeout(10)
    conn.connect((host, port))
    conns.append(conn)
print("connected", flush=True)
sys.stdin.read()
for conn in conns:
    conn.close()
