"""Sends one TCP segment (an ACK, no data) with the given addresses and
ports through a raw socket, as the kernel would send on that connection:
it meets the OUTPUT hook like any segment of it. Prints "sent", or
"dropped" when netfilter dropped it on output (the send fails with EPERM).

    tcp_segment.py SRC SPORT DST DPORT
"""
import socket, struct, sys

src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# Source port, destination port, sequence, acknowledgement, header length 5
# words, flags ACK, window, checksum, urgent pointer.
header = struct.pack("!HHIIBBHHH", sport, dport, 12345, 67890, 5 << 4, 0x10, 1024, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header))
header = header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.bind((src, 0))
try:
    raw.sendto(header, (dst, 0))
    print("sent")
except PermissionError:
    print("dropped")
