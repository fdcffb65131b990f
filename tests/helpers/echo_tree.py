"""The process tree CRIU dumps in the tests: an echo server whose children
hold the connections.

    echo_tree.py HOST PORT CONNECTIONS CHILDREN

The root (which must lead its session, as CRIU wants) listens on HOST:PORT
and forks CHILDREN children; the connections are accepted in turn by the
children (round robin through a shared listening socket), and each child
echoes every byte back on each of its connections. Nothing is printed: the
tree's stdio is /dev/null, which CRIU restores as it was.
"""
import os, selectors, socket, sys, time

host, port, connections, children = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))
listener.listen(1024)


def serve(share):
    sel = selectors.DefaultSelector()
    accepted = 0
    sel.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                sel.register(conn, selectors.EVENT_READ)
                accepted += 1
                if accepted >= share:
                    sel.unregister(listener)
            else:
                try:
                    data = key.fileobj.recv(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    continue
                key.fileobj.sendall(data)


listener.setblocking(False)
if children == 0:
    serve(connections)
for i in range(children):
    share = connections // children + (1 if i < connections % children else 0)
    if os.fork() == 0:
        serve(share)
        os._exit(0)
listener.close()
while True:
    time.sleep(3600)
