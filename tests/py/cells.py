"""Runs cells in a running kernel through its connection file, the way a notebook front end's
messages reach it (shared by the hub and pod drivers)."""


def run_cells(connection_file, cells):
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    out = run_on_client(kc, cells)
    kc.stop_channels()
    return out


def run_on_client(kc, cells):
    """Each cell's {"cell", "status", "stdout", "ename"}, through a ready kernel client."""
    out = []
    for i, code in enumerate(cells):
        text = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                text.append(msg["content"]["text"])

        try:
            reply = kc.execute_interactive(code, timeout=60, output_hook=hook, allow_stdin=False)
            c = reply["content"]
            out.append({"cell": i, "status": c["status"], "stdout": "".join(text), "ename": c.get("ename")})
        except Exception as e:  # the kernel died or timed out
            out.append({"cell": i, "status": "dead", "stdout": "".join(text), "ename": type(e).__name__})
    return out
