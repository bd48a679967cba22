"""``python -m nbtasks.worker``: the bootstrap of a worker process. With the eventlet
backend, the standard library is patched first, before anything that opens sockets
(redis-py above all) is imported; then the process's loop (`process`) is imported and
run, and its exit code is the one way out."""

import sys


def _backend(argv: list[str]) -> str:
    return argv[argv.index("--backend") + 1] if "--backend" in argv[:-1] else "eventlet"


def _patch() -> None:
    """eventlet's patching, before anything else; its deprecation notice is for library
    authors, not users."""
    import os
    import warnings

    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    # eventlet's own resolver imports dnspython, a third of a worker's start-up; the
    # system resolver in eventlet's thread pool (see _green_resolver) is as concurrent.
    os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
    import eventlet

    eventlet.monkey_patch()
    _linear_sendall()
    if os.environ["EVENTLET_NO_GREENDNS"] == "yes":
        _green_resolver()


def _linear_sendall() -> None:
    """eventlet's green sendall sends ``data[sent:]`` after each partial send, a copy of
    the rest every time: quadratic in the size of one buffer, and a batch of large results
    is one buffer (100 MB: 15 s instead of 0.03 s). Sending views of it is linear."""
    from eventlet.greenio.base import GreenSocket

    def sendall(self: GreenSocket, data: bytes, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        sent = self.send(view, flags)
        while sent < len(view):
            sent += self.send(view[sent:], flags)

    GreenSocket.sendall = sendall


def _green_resolver() -> None:
    """Name lookups in eventlet's thread pool: the system resolver (with /etc/hosts and
    nsswitch) waits in a real thread while the other green threads go on."""
    import functools
    import socket

    import eventlet.green.socket
    from eventlet import tpool

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "getnameinfo"):
        lookup = functools.partial(tpool.execute, getattr(socket, name))
        setattr(socket, name, lookup)
        setattr(eventlet.green.socket, name, lookup)  # its create_connection looks here


if __name__ == "__main__":
    if _backend(sys.argv) == "eventlet":
        _patch()
    from .process import main

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # At once: tasks may still run in threads of their own, which a normal exit would
    # wait for (what they would finish goes back to the queue; what finished is recorded).
    import os

    os._exit(code)
