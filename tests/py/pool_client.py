"""Connects to HOST:PORT, sends PAYLOAD (a JSON string, so newlines survive the shell), and
prints "answered" or what went wrong."""
import json
import socket
import sys

host, port, payload = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
s = socket.create_connection((host, port), timeout=3)
s.sendall(payload.encode())
try:
    print("answered" if s.recv(4096) else "closed")
except socket.timeout:
    print("no answer")
