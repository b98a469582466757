"""What became of a network attempt, as the egress tests' clients report it."""
import errno
import socket


def outcome(attempt):
    """Runs `attempt()`: "ok" (a refused connect reached the other end, so it counts as ok for
    policy purposes), "EPERM", "timeout", or "error:<text>"."""
    try:
        attempt()
        return "ok"
    except ConnectionRefusedError:
        return "ok"
    except PermissionError:
        return "EPERM"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "EPERM" if e.errno == errno.EPERM else "error:" + str(e)
