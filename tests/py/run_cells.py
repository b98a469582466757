"""Runs notebook cells in a real IPython kernel, the way a notebook server does.

Usage: run_cells.py CELLS.json RESULTS.json
CELLS.json: {"notebook": "path/of/notebook.ipynb", "cells": ["code", ...]}, optionally with
"ready_file" (written once the kernel answers) and "wait_for" (a file to wait for, 60 s at
most, before the cells run): a kernel that was running before the agent started.
Before starting the kernel this process moves itself into the cgroup named by $GUARD_CGROUP
(so the kernel starts inside it, as under a spawner). One JSON object per cell is written to
RESULTS.json: {"cell": i, "status": "ok"|"error"|"dead", "stdout": ..., "notices": [...], "ename": ...}.
"""
import json
import os
import sys

from jupyter_client.manager import KernelManager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cells import run_on_client  # noqa: E402


def start_kernel(env, attempts=3):
    """Starts a kernel and waits until it answers. jupyter_client picks free TCP ports, then
    the kernel binds them: another process can take one in between (tests run side by side),
    and the kernel dies with "Address already in use". A kernel that died before answering is
    started again, on new ports."""
    for attempt in range(attempts):
        km = KernelManager(kernel_name="python3")
        km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        km.start_kernel(env=env)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            return km, kc
        except RuntimeError:
            if km.is_alive() or attempt == attempts - 1:
                raise
            print("run_cells: the kernel died before answering; starting it again", file=sys.stderr)
            kc.stop_channels()
            km.cleanup_resources()


def main():
    cells_path, results_path = sys.argv[1], sys.argv[2]
    spec = json.load(open(cells_path))
    cgroup = os.environ.get("GUARD_CGROUP")
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    env = dict(os.environ)
    env["JPY_SESSION_NAME"] = spec["notebook"]
    env["JUPYTERHUB_API_TOKEN"] = env.get("GUARD_TEST_TOKEN", "")
    km, kc = start_kernel(env)
    if spec.get("ready_file"):
        open(spec["ready_file"], "w").close()
    if spec.get("wait_for"):
        import time
        deadline = time.time() + 60
        while not os.path.exists(spec["wait_for"]) and time.time() < deadline:
            time.sleep(0.02)
    results = run_on_client(kc, spec["cells"])
    kc.stop_channels()
    km.shutdown_kernel(now=False)
    json.dump(results, open(results_path, "w"))


if __name__ == "__main__":
    main()
