"""Runs cells in a running kernel through its connection file, the way a notebook front end's
messages reach it (shared by the hub and pod drivers)."""


def run_cells(connection_file, cells):
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    # No heartbeat: a client that did not start the kernel takes one missed ping (1 s) for
    # death, and a kernel still starting (R loading IRkernel on a busy node) misses it.
    # wait_for_ready's own timeout bounds the wait on kernel_info instead.
    kc.start_channels(hb=False)
    kc.wait_for_ready(timeout=60)
    out = run_on_client(kc, cells)
    kc.stop_channels()
    return out


NOTICE = "[notebook-guard] "


def split_notices(text):
    """The cell's own output, and notebook-guard's notices apart (each line written to the
    kernel's stderr when something was refused; it may land in the cell after the one that
    caused it, when that one ended first)."""
    keep, notices = [], []
    for line in text.split("\n"):
        if line.startswith(NOTICE):
            notices.append(line)
            if keep and keep[-1] == "":
                keep.pop()
        else:
            keep.append(line)
    return "\n".join(keep), notices


def run_on_client(kc, cells):
    """Each cell's {"cell", "status", "stdout", "notices", "ename"}, through a ready kernel
    client."""
    out = []
    for i, code in enumerate(cells):
        text = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                text.append(msg["content"]["text"])

        try:
            reply = kc.execute_interactive(code, timeout=60, output_hook=hook, allow_stdin=False)
            c = reply["content"]
            stdout, notices = split_notices("".join(text))
            out.append({"cell": i, "status": c["status"], "stdout": stdout, "notices": notices, "ename": c.get("ename")})
        except Exception as e:  # the kernel died or timed out
            stdout, notices = split_notices("".join(text))
            out.append({"cell": i, "status": "dead", "stdout": stdout, "notices": notices, "ename": type(e).__name__})
    return out
