"""A caller on the eventlet backend whose tasks return what eventlet made in the worker:
a patched threading.Lock, a __main__ dataclass holding one, or raise eventlet.Timeout.
Prints each outcome and whether eventlet reached this process."""

import json
import sys
import threading
from dataclasses import dataclass

import nbtasks


@dataclass
class Box:
    lock: object


def green(kind):
    if kind == "lock":
        return threading.Lock()
    if kind == "box":
        return Box(threading.Lock())
    if kind == "timeout":
        import eventlet

        raise eventlet.Timeout()
    return kind


nbtasks.configure(redis_url=sys.argv[1], warm=0)
kinds = ["lock", "box", "timeout", "plain"]
results = nbtasks.pmap(green, kinds, processes=1, backend="eventlet", progress=False, errors="return")
shown = [[r.exc_type, r.message] if isinstance(r, nbtasks.Failure) else repr(r) for r in results]
print(json.dumps({"results": shown, "eventlet": "eventlet" in sys.modules, "greenlet": "greenlet" in sys.modules}))
