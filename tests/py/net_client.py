"""Tries each destination of a JSON list and prints one JSON result per line.

Each target: {"name", "kind": "tcp"|"udp-sendto"|"udp-connect"|"packet"|"raw"|"ping", "host",
"port"}. "ping" sends an echo request from an ICMP datagram socket (no capability needed where
net.ipv4.ping_group_range admits the group) and waits for the reply.
Results: "ok", "EPERM", "timeout", or "error:<text>". A refused connect means the packet reached
the other end (the destination namespace), so it counts as "ok" for policy purposes.
"""
import json
import socket
import sys

from outcome import outcome


def attempt(t):
    kind = t["kind"]
    if kind == "packet":
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
        return
    if kind == "raw":
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        return
    fam = socket.AF_INET6 if ":" in t["host"] else socket.AF_INET
    if kind == "ping":
        proto = socket.IPPROTO_ICMPV6 if fam == socket.AF_INET6 else socket.IPPROTO_ICMP
        s = socket.socket(fam, socket.SOCK_DGRAM, proto)
        s.settimeout(1.5)
        # Echo request (type 8, or 128 for ICMPv6); the kernel fills in the id and checksum.
        s.sendto(bytes([128 if fam == socket.AF_INET6 else 8, 0, 0, 0, 0, 0, 0, 1]) + b"exfil", (t["host"], 0))
        s.recv(64)
        s.close()
        return
    if kind == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(1.5)
        s.connect((t["host"], t["port"]))
        s.close()
        return
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(1.5)
    if kind == "udp-connect":
        s.connect((t["host"], t["port"]))
        s.send(b"ping")
    else:
        s.sendto(b"ping", (t["host"], t["port"]))
    s.close()


for t in json.load(open(sys.argv[1])):
    print(json.dumps({"name": t["name"], "result": outcome(lambda: attempt(t))}), flush=True)
