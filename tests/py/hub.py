"""A real JupyterHub (LocalProcessSpawner, configurable-http-proxy, system users), driven only
through its REST API with a service token, the way an operator's automation or the hub's own
UI would drive it.

Usage: hub.py SPEC.json RESULTS.json   (as root: LocalProcessSpawner starts servers as users)

SPEC: {"hubenv": DIR (a venv with jupyterhub, jupyter_server, ipykernel), "chp": PATH,
       "dir": WORKDIR, "users": [NAME, ...], "notebook": "dir/name.ipynb",
       "cells": ["code", ...], "go": PATH (optional: waited for before the cells run)}
For each user: create the user, start the server, open a session on `notebook` through the
server's sessions API behind the proxy (which starts the kernel and sets JPY_SESSION_NAME),
run the cells in that kernel through its connection file, stop the server. RESULTS: {"users":
{NAME: {"kernel_id", "cells": [{"status", "stdout"}]}}, "hub_ok_after": bool}.
"""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cells import run_cells  # noqa: E402

HUB, PROXY, PROXY_API = 8081, 8000, 8001
TOKEN = "guard-test-service-token-5f1c2a"


def api(method, url, body=None, ok=(200, 201, 202, 204)):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "token " + TOKEN)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        if e.code in ok:
            return e.code, None
        raise RuntimeError(f"{method} {url}: {e.code} {e.read().decode()[:500]}")


def until(what, check, limit=90):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            v = check()
            if v:
                return v
        except (OSError, RuntimeError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def config(spec):
    bin_ = os.path.join(spec["hubenv"], "bin")
    return f"""
c = get_config()
c.JupyterHub.bind_url = "http://127.0.0.1:{PROXY}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {HUB}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{PROXY_API}"
c.ConfigurableHTTPProxy.command = [{spec["chp"]!r}]
c.JupyterHub.db_url = "sqlite:///{spec["dir"]}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{spec["dir"]}/cookie_secret"
c.JupyterHub.pid_file = "{spec["dir"]}/hub.pid"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "guard-test", "api_token": {TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "guard-test", "services": ["guard-test"],
    "scopes": ["admin:users", "admin:servers", "access:servers"]}}]
c.Spawner.cmd = [{os.path.join(bin_, "jupyterhub-singleuser")!r}]
c.Spawner.environment = {{"PATH": "{bin_}:/usr/bin:/bin"}}
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
"""


def main():
    spec = json.load(open(sys.argv[1]))
    results = {"users": {}}
    os.makedirs(spec["dir"], exist_ok=True)
    cfg = os.path.join(spec["dir"], "jupyterhub_config.py")
    open(cfg, "w").write(config(spec))
    log = open(os.path.join(spec["dir"], "hub.log"), "w")
    hub = subprocess.Popen([os.path.join(spec["hubenv"], "bin", "jupyterhub"), "-f", cfg],
                           cwd=spec["dir"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{PROXY}"
    try:
        until("the hub", lambda: api("GET", f"{base}/hub/api/")[0] == 200)
        kernels = {}
        for user in spec["users"]:
            api("POST", f"{base}/hub/api/users/{user}", ok=(409,))
            api("POST", f"{base}/hub/api/users/{user}/server", {})
            until(f"{user}'s server", lambda: api("GET", f"{base}/hub/api/users/{user}")[1]["servers"][""]["ready"])
            name = os.path.basename(spec["notebook"])
            _, session = api("POST", f"{base}/user/{user}/api/sessions",
                             {"path": spec["notebook"], "name": name, "type": "notebook",
                              "kernel": {"name": "python3"}})
            kid = session["kernel"]["id"]
            home = os.path.expanduser(f"~{user}")
            cf = os.path.join(home, ".local/share/jupyter/runtime", f"kernel-{kid}.json")
            until(f"{user}'s connection file", lambda: os.path.exists(cf))
            kernels[user] = (kid, cf)
        if spec.get("go"):
            open(os.path.join(spec["dir"], "ready"), "w").close()
            until("the go file", lambda: os.path.exists(spec["go"]), limit=120)
        for user, (kid, cf) in kernels.items():
            results["users"][user] = {"kernel_id": kid, "cells": run_cells(cf, spec["cells"])}
        for user in spec["users"]:
            api("DELETE", f"{base}/hub/api/users/{user}/server")
        results["hub_ok_after"] = api("GET", f"{base}/hub/api/users")[0] == 200
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=20)
        except subprocess.TimeoutExpired:
            hub.kill()
        json.dump(results, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
