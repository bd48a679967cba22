"""A caller as a user writes it: a function defined in __main__ that leaves a trace of
every execution in a log file, mapped over range(N). Prints the results as JSON."""

import argparse
import asyncio
import json
import os
import time

import nbtasks

parser = argparse.ArgumentParser()
parser.add_argument("--redis", default=None, help="default: the embedded server")
parser.add_argument("--log", required=True)
parser.add_argument("--n", type=int, default=100)
parser.add_argument("--delay", type=float, default=0.0)
parser.add_argument("--name", default=None)
parser.add_argument("--fail-while", default=None, help="items divisible by 7 raise while this file exists")
parser.add_argument("--processes", type=int, default=2)
parser.add_argument("--concurrency", type=int, default=20)
parser.add_argument("--backend", default=None, help="eventlet, threads, or asyncio (an async def function)")
args = parser.parse_args()

log_path, delay, fail_flag = args.log, args.delay, args.fail_while


def log(x):
    # O_APPEND writes of one short line are atomic, so concurrent workers don't interleave.
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{x}\n".encode())
    os.close(fd)


def outcome(x):
    if fail_flag and x % 7 == 0 and os.path.exists(fail_flag):
        raise ValueError(f"refusing {x}")
    return x * x


def work(x):
    log(x)
    time.sleep(delay)
    return outcome(x)


async def async_work(x):
    log(x)
    await asyncio.sleep(delay)
    return outcome(x)


try:
    results = nbtasks.pmap(
        async_work if args.backend == "asyncio" else work,
        range(args.n),
        name=args.name,
        redis=args.redis,
        processes=args.processes,
        concurrency=args.concurrency,
        backend=args.backend,
    )
except nbtasks.TaskError as exc:
    print(json.dumps({"failed": [f.index for f in exc.failures]}))
    raise SystemExit(1) from None
print(json.dumps({"results": results}))
