"""The key schema: every Redis key nbtasks writes, named in one place.

All keys of one job share the hash tag ``{job}``, so a job lives in one slot of a Redis
Cluster and the Lua scripts (`lua`) may touch several of its keys.

    nbtasks:jobs                 set    names of every job (so status needs no KEYS)
    nbtasks:{job}:meta           hash   format, size, total, list, ready, func label and digests
    nbtasks:{job}:func           string the pickled function, stored again at every run
    nbtasks:{job}:inputs         hash   each distinct input once: small ones packed by 256 in "c<chunk>",
                                        large ones under their index (see store.chunks)
    nbtasks:{job}:index:<n>      hash   digest of an input's value -> its index, in buckets (see index.ADD)
    nbtasks:{job}:views          hash   digest of a call's list -> the index of each of its items
    nbtasks:{job}:complete       set    digests of lists whose every item has a result
    nbtasks:{job}:queue          list   indices waiting for a worker
    nbtasks:{job}:claims:<wid>   hash   index -> when a worker took it (not yet recorded)
    nbtasks:{job}:alive:<wid>    string set while a worker on another machine lives; expires
    nbtasks:{job}:workers        set    worker ids of the current run
    nbtasks:{job}:done           bitmap bit i set once item i has a recorded result
    nbtasks:{job}:results        hash   pickled results, kept as the inputs are
    nbtasks:{job}:failures       hash   index -> pickled final failure (cleared at each run)
    nbtasks:{job}:attempts       hash   index -> failed attempts in this run
    nbtasks:{job}:history        hash   index -> one line per failed attempt in this run
    nbtasks:{job}:delayed        zset   indices waiting to be retried, by due time (ms)
    nbtasks:{job}:deaths         hash   index -> times a worker died while running it
    nbtasks:{job}:rate           string the rate limit's next free turn (ms)
    nbtasks:{job}:counts         hash   done, failed, running (claimed, not recorded)
    nbtasks:{job}:owner          string token of the caller running the job; expires
                                        when the caller stops refreshing it
    nbtasks:{job}:cancel         string set to ask whoever runs the job to stop
    nbtasks:{job}:fatal          string why a worker could not start
    nbtasks:{job}:refused        hash   host and Python -> why a worker there refused the job
    nbtasks:{job}:finished       list   pushed when the last item settles: wakes the caller
    nbtasks:{job}:output         stream what tasks printed and logged: item, stream, text, worker
    nbtasks:{job}:blobs          set    "<place>\\0<folder>" of each folder holding its large payloads
    nbtasks:{job}:keyed ... keystreak, held:<key>   per-key limits (see store.limits)
    nbtasks:store                string this store's id: the top folder of its jobs' large payloads
"""

from __future__ import annotations

from collections.abc import Iterable

# 1: one job per list of inputs; 2: a job's inputs are distinct, and lists are views;
# 3: small inputs and results are packed in chunks (a job of format 2 is read as it is)
FORMAT = "3"
INDEXED = ("2", FORMAT)  # formats whose inputs are indexed by their digest
REGISTRY = "nbtasks:jobs"
STORE_ID = "nbtasks:store"

PARTS = (
    "meta", "func", "inputs", "views", "complete", "queue", "workers", "done", "results", "failures",
    "attempts", "history", "delayed", "deaths", "rate", "counts", "owner", "cancel", "fatal", "finished", "refused",
    "output", "blobs", "keyed", "keyrun", "keywait", "keytat", "keyhold", "keystreak",
)  # fmt: skip
RUN_STATE = ("queue", "failures", "attempts", "history", "delayed", "deaths", "fatal", "cancel", "finished", "refused")


class JobKeys:
    """The key names of one job: ``keys.meta``, ``keys.queue``... (see PARTS)."""

    def __init__(self, job: str) -> None:
        # Braces would end the hash tag early; escape them (and '%', the escape itself).
        tag = job.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        self.prefix = f"nbtasks:{{{tag}}}:"
        for part in PARTS:
            setattr(self, part, self.prefix + part)

    meta: str
    func: str
    inputs: str
    views: str
    complete: str
    queue: str
    workers: str
    done: str
    results: str
    failures: str
    attempts: str
    history: str
    delayed: str
    deaths: str
    rate: str
    counts: str
    owner: str
    cancel: str
    fatal: str
    finished: str
    refused: str
    output: str
    blobs: str
    keyed: str
    keyrun: str
    keywait: str
    keytat: str
    keyhold: str
    keystreak: str

    def claims(self, wid: str) -> str:
        return f"{self.prefix}claims:{wid}"

    def alive(self, wid: str) -> str:
        return f"{self.prefix}alive:{wid}"

    def held(self, key: bytes) -> bytes:
        """The list of items waiting for limit key `key` (as `store.limits` names it)."""
        return f"{self.prefix}held:".encode() + key

    @property
    def index(self) -> str:
        """The prefix of the index's buckets: ``index:0``, ``index:1``..."""
        return f"{self.prefix}index:"

    def all(self, wids: Iterable[bytes], buckets: int = 0, held: Iterable[bytes] = ()) -> list[str | bytes]:
        """Every key of the job, given the ids of its workers, its index's buckets and the
        limit keys with items waiting."""
        per_worker = [key for w in wids for key in (self.claims(w.decode()), self.alive(w.decode()))]
        index = [f"{self.index}{b}" for b in range(buckets)]
        return [self.prefix + part for part in PARTS] + per_worker + index + [self.held(key) for key in held]


class KeyCache(dict[str, JobKeys]):
    """JobKeys by job name, made once each."""

    def __missing__(self, job: str) -> JobKeys:
        keys = self[job] = JobKeys(job)
        return keys
