"""A small authoritative DNS server for the tests, on UDP and TCP port 53 of one address.

Zone (JSON): {"name": {"ttl": N, "A": [...], "AAAA": [...], "CNAME": "target"}}. A CNAME is
followed within the zone and its records are put in the same answer, as a recursive resolver
answers. Unknown names get NXDOMAIN. Writes READY_FILE once both sockets are bound.
"""
import json
import socket
import struct
import sys
import threading


def parse_question(msg):
    off, labels = 12, []
    while msg[off]:
        n = msg[off]
        labels.append(msg[off + 1 : off + 1 + n].decode())
        off += 1 + n
    qtype, _ = struct.unpack("!HH", msg[off + 1 : off + 5])
    return ".".join(labels).lower(), qtype, off + 5


def encode_name(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


def answer(zone, msg):
    """The reply, with owner names compressed as servers write them: a pointer to the
    question, or to the CNAME record whose target the owner is."""
    name, qtype, qend = parse_question(msg)
    body = bytearray(msg[12:qend])
    at = {name: 12}
    count, owner = 0, name

    def rr(owner, rtype, ttl, rdata, target=None):
        nonlocal count
        body.extend(struct.pack("!HHHIH", 0xC000 | at[owner], rtype, 1, ttl, len(rdata)))
        if target is not None:
            at[target] = 12 + len(body)
        body.extend(rdata)
        count += 1

    for _ in range(8):
        entry = zone.get(owner)
        if entry is None:
            break
        ttl = entry.get("ttl", 300)
        if "CNAME" in entry:
            rr(owner, 5, ttl, encode_name(entry["CNAME"]), target=entry["CNAME"])
            owner = entry["CNAME"]
            continue
        if qtype in (1, 255):
            for a in entry.get("A", []):
                rr(owner, 1, ttl, socket.inet_pton(socket.AF_INET, a))
        if qtype in (28, 255):
            for a in entry.get("AAAA", []):
                rr(owner, 28, ttl, socket.inet_pton(socket.AF_INET6, a))
        break
    rcode = 0 if name in zone else 3
    flags = 0x8400 | (msg[2] & 0x01) << 8 | rcode  # QR, AA, RD copied
    return msg[:2] + struct.pack("!HHHHH", flags, 1, count, 0, 0) + bytes(body)


def serve_udp(sock, zone):
    while True:
        msg, peer = sock.recvfrom(4096)
        sock.sendto(answer(zone, msg), peer)


def serve_tcp(sock, zone):
    while True:
        conn, _ = sock.accept()
        with conn:
            length = struct.unpack("!H", conn.recv(2))[0]
            msg = b""
            while len(msg) < length:
                msg += conn.recv(length - len(msg))
            reply = answer(zone, msg)
            conn.sendall(struct.pack("!H", len(reply)) + reply)


def main():
    addr, zone_file, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    zone = json.load(open(zone_file))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((addr, 53))
    tcp.listen(16)
    threading.Thread(target=serve_tcp, args=(tcp, zone), daemon=True).start()
    open(ready, "w").write("ready")
    serve_udp(udp, zone)


if __name__ == "__main__":
    main()
