"""A real JupyterHub (LocalProcessSpawner, configurable-http-proxy, system users), driven only
through its REST API with a service token, the way an operator's automation or the hub's own
UI would drive it.

Usage: hub.py SPEC.json RESULTS.json   (as root: LocalProcessSpawner starts servers as users)

SPEC: {"hubenv": DIR (a venv with jupyterhub, jupyter_server, ipykernel), "chp": PATH,
       "dir": WORKDIR, "servers": ["user" | "user/name", ...], "notebook": "dir/name.ipynb",
       "cells": ["code", ...], "go": PATH (optional: waited for before the cells run),
       "restart": bool (optional: then stop and start every server and run the cells again),
       "answered": ["user" | "user/name", ...] (optional: servers someone else is expected to
       stop after the cells ran; waited for, up to 20 s, instead of stopping them)}
For each server (a user's default one, or a named one): create the user, start the server,
open a session on `notebook` through the server's sessions API behind the proxy (which starts
the kernel and sets JPY_SESSION_NAME), run the cells in that kernel through its connection
file, stop the server. RESULTS: {"servers": {KEY: {"kernel_id", "cells": [...]}},
"restarted": {KEY: ...}, "stopped_by_others": {KEY: bool}, "groups": {USER: [...]},
"hub_ok_after": bool}.
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
c.JupyterHub.allow_named_servers = True
c.JupyterHub.services = [{{"name": "guard-test", "api_token": {TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "guard-test", "services": ["guard-test"],
    "scopes": ["admin:users", "admin:servers", "admin:groups", "access:servers"]}}]
c.Spawner.cmd = [{os.path.join(bin_, "jupyterhub-singleuser")!r}]
c.Spawner.environment = {{"PATH": "{bin_}:/usr/bin:/bin"}}
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
"""


def start_server(base, key, notebook):
    """Starts `key`'s server ("user" or "user/name") and a kernel in it; (kernel id, connection file)."""
    user, _, name = key.partition("/")
    api("POST", f"{base}/hub/api/users/{user}", ok=(409,))
    api("POST", f"{base}/hub/api/users/{user}/" + (f"servers/{name}" if name else "server"), {})
    until(f"{key}'s server", lambda: api("GET", f"{base}/hub/api/users/{user}")[1]["servers"][name]["ready"])
    prefix = f"{base}/user/{user}/{name}/" if name else f"{base}/user/{user}/"
    _, session = api("POST", f"{prefix}api/sessions",
                     {"path": notebook, "name": os.path.basename(notebook), "type": "notebook",
                      "kernel": {"name": "python3"}})
    kid = session["kernel"]["id"]
    cf = os.path.join(os.path.expanduser(f"~{user}"), ".local/share/jupyter/runtime", f"kernel-{kid}.json")
    until(f"{key}'s connection file", lambda: os.path.exists(cf))
    return kid, cf


def stop_server(base, key):
    user, _, name = key.partition("/")
    api("DELETE", f"{base}/hub/api/users/{user}/" + (f"servers/{name}" if name else "server"))
    until(f"{key}'s server to stop",
          lambda: name not in api("GET", f"{base}/hub/api/users/{user}")[1]["servers"])


def main():
    spec = json.load(open(sys.argv[1]))
    results = {"servers": {}, "restarted": {}}
    os.makedirs(spec["dir"], exist_ok=True)
    cfg = os.path.join(spec["dir"], "jupyterhub_config.py")
    open(cfg, "w").write(config(spec))
    log = open(os.path.join(spec["dir"], "hub.log"), "w")
    hub = subprocess.Popen([os.path.join(spec["hubenv"], "bin", "jupyterhub"), "-f", cfg],
                           cwd=spec["dir"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{PROXY}"
    try:
        until("the hub", lambda: api("GET", f"{base}/hub/api/")[0] == 200)
        kernels = {key: start_server(base, key, spec["notebook"]) for key in spec["servers"]}
        if spec.get("go"):
            open(os.path.join(spec["dir"], "ready"), "w").close()
            until("the go file", lambda: os.path.exists(spec["go"]), limit=120)
        for key, (kid, cf) in kernels.items():
            results["servers"][key] = {"kernel_id": kid, "cells": run_cells(cf, spec["cells"])}
        results["stopped_by_others"] = {}
        for key in spec["servers"]:
            if key in spec.get("answered", []):
                user, _, name = key.partition("/")
                try:
                    until(f"{key}'s server stopped by someone else",
                          lambda: name not in api("GET", f"{base}/hub/api/users/{user}")[1]["servers"], limit=20)
                    results["stopped_by_others"][key] = True
                    continue
                except RuntimeError:
                    results["stopped_by_others"][key] = False
            stop_server(base, key)
        users = {key.partition("/")[0] for key in spec["servers"]}
        results["groups"] = {u: api("GET", f"{base}/hub/api/users/{u}")[1].get("groups", []) for u in users}
        if spec.get("restart"):
            # The users stop their servers and start them again (a new server process each).
            for key in spec["servers"]:
                kid, cf = start_server(base, key, spec["notebook"])
                results["restarted"][key] = {"kernel_id": kid, "cells": run_cells(cf, spec["cells"])}
                stop_server(base, key)
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
