"""Everything nbtasks keeps in Redis, and the only package that imports redis-py.

(the key schema, every key name built in one place, is nbtasks.keys: names, no Redis)

urls         Redis URLs: for workers, for messages, off this host or not
client       the commands the store sends, with their replies typed
lua          the scripts that change several keys of a job atomically
limits       the scripts of per-key limits (items waiting for their key, backoffs)
payloads     what Redis holds for an input or result: compressed, or a reference outside
bits         done-bitmaps, packed index lists, batches of round trips
connection   URLs, clients, the stores shared by every entry point
base         what every operation shares; redis-py's errors become nbtasks errors
jobs         operations on a job's definition: metadata, inputs, index, views
runs         operations of a run: queue, claims, records, heartbeats, rate limit
results      operations that read a job back: results, failures, output
operations   the Store, all of them together
"""

from ..keys import FORMAT, INDEXED, PARTS, REGISTRY, JobKeys
from .base import StoreBase
from .bits import BATCH, pending_indices
from .connection import connect, forget, open_store, ride_out
from .operations import Store
from .records import APPENDABLE, DISTINCT, Counts, JobRecord, Outcome, definition
from .urls import client_url, safe_url

__all__ = [
    "APPENDABLE",
    "DISTINCT",
    "JobRecord",
    "definition",
    "BATCH",
    "FORMAT",
    "INDEXED",
    "PARTS",
    "REGISTRY",
    "Counts",
    "JobKeys",
    "Outcome",
    "Store",
    "StoreBase",
    "client_url",
    "connect",
    "forget",
    "open_store",
    "pending_indices",
    "ride_out",
    "safe_url",
]
