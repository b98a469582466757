"""A stand-in mining pool (and web server) on HOST, ports given: each connection's first data
is logged (one JSON line: port, data) to LOG and answered like a pool answers a JSON-RPC
call, or like a web server. Writes READY once listening."""
import json
import socket
import sys
import threading

host, log, ready, ports = sys.argv[1], sys.argv[2], sys.argv[3], [int(p) for p in sys.argv[4:]]
lock = threading.Lock()


def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)
    while True:
        conn, _ = s.accept()
        conn.settimeout(3)
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        with lock, open(log, "a") as f:
            f.write(json.dumps({"port": port, "data": data.decode(errors="replace")}) + "\n")
        reply = b'{"id":1,"jsonrpc":"2.0","error":null,"result":{"status":"OK"}}\n'
        if data.startswith(b"GET "):
            reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        try:
            conn.sendall(reply)
        except OSError:
            pass
        conn.close()


for p in ports:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
open(ready, "w").write("ready")
threading.Event().wait()
