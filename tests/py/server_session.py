"""Opens a notebook session on a running Jupyter server through its REST API (which starts the
kernel and sets JPY_SESSION_NAME, as JupyterLab does when a notebook is opened), then runs
cells in that kernel through its connection file.

Usage: server_session.py SPEC.json RESULTS.json
SPEC: {"url": "http://127.0.0.1:8888", "token": ..., "notebook": "dir/name.ipynb",
       "runtime_dir": where the server writes kernel-<id>.json (as this process sees it),
       "cells": ["code", ...], "kernel": kernelspec name (default python3),
       "keep": leave the session open, as a user leaves a notebook open (default false)}
RESULTS: {"kernel_id": ..., "cells": [{"cell", "status", "stdout", "notices", "ename"}]}
"""
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cells import run_cells  # noqa: E402


def call(spec, method, path, body=None):
    req = urllib.request.Request(spec["url"] + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", "token " + spec["token"])
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read().decode() or "null")


def main():
    spec = json.load(open(sys.argv[1]))
    deadline = time.time() + 90
    while True:
        try:
            call(spec, "GET", "/api/status")
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    name = os.path.basename(spec["notebook"])
    session = call(spec, "POST", "/api/sessions",
                   {"path": spec["notebook"], "name": name, "type": "notebook",
                    "kernel": {"name": spec.get("kernel", "python3")}})
    kid = session["kernel"]["id"]
    cf = os.path.join(spec["runtime_dir"], f"kernel-{kid}.json")
    while not os.path.exists(cf):
        if time.time() > deadline:
            raise RuntimeError(f"no connection file {cf}")
        time.sleep(0.1)
    results = {"kernel_id": kid, "cells": run_cells(cf, spec["cells"])}
    if not spec.get("keep"):
        call(spec, "DELETE", f"/api/sessions/{session['id']}")
    json.dump(results, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
