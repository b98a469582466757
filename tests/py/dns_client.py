"""Looks names up (getaddrinfo: the system resolver, as any library does) and connects, and
prints one JSON result per step: {"name", "result", "addr"}.

Steps (JSON list): {"name", "host", "port", "family": 4|6} resolves `host` and connects to
its first address at once; {"name", "again": STEP, "port"} connects to the address step STEP
got, without looking it up; {"sleep": SECONDS}. Results: "ok" (a refused connect reached the
destination), "EPERM", "timeout", "error:<text>".
"""
import json
import socket
import sys
import time

from outcome import outcome


def connect(fam, addr, port):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(1.5)
    try:
        return outcome(lambda: s.connect((addr, port)))
    finally:
        s.close()


got = {}
for step in json.load(open(sys.argv[1])):
    if "sleep" in step:
        time.sleep(step["sleep"])
        continue
    if "again" in step:
        fam, addr = got[step["again"]]
    else:
        fam = socket.AF_INET6 if step.get("family") == 6 else socket.AF_INET
        try:
            addr = socket.getaddrinfo(step["host"], step["port"], fam, socket.SOCK_STREAM)[0][4][0]
        except socket.gaierror as e:
            print(json.dumps({"name": step["name"], "result": "error:" + str(e), "addr": None}), flush=True)
            continue
    got[step["name"]] = (fam, addr)
    print(json.dumps({"name": step["name"], "result": connect(fam, addr, step["port"]), "addr": addr}), flush=True)
