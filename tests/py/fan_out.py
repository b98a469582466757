"""Connects to HOST on COUNT ports from FIRST (or COUNT times to one port, with `--same`), each
a TCP connect that the destination refuses, and prints how many were made."""
import socket
import sys

host, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
same = "--same" in sys.argv
made = 0
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.5)
    try:
        s.connect((host, first if same else first + i))
    except OSError:
        pass
    finally:
        s.close()
    made += 1
print(made)
