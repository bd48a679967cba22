"""What travels with a function and back with a result: the submodules a function uses
(imported in the worker before it runs), results that cannot be pickled (a clear failure,
the same on every backend) and nothing of eventlet reaching the caller."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import threading
import xml.dom.minidom  # noqa: F401 (the functions below use it)
import xml.etree.ElementTree
from pathlib import Path

import cloudpickle
import pytest
import redis

import nbtasks
from nbtasks import codec
from nbtasks.errors import NbtasksError, ResultNotPicklable

from .test_backends import BACKENDS, pick

ONE_SERVER = True  # (see conftest): what is pickled, not the server, is under test

SCRIPTS = Path(__file__).parent / "scripts"


def tags(doc: list[str]) -> list[str]:
    return [xml.etree.ElementTree.fromstring(x).tag for x in doc]


def kinds(doc: list[str]) -> list[str]:
    return list(map(lambda x: xml.dom.minidom.parseString(x).documentElement.tagName, doc))


def both(doc: list[str]) -> tuple[list[str], list[str]]:
    return tags(doc), kinds(doc)


def only_the_package() -> str:
    return xml.__name__


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NBTASKS_WARM": "0"}
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=120, env=env
    )


# A. Functions carry their imports.


def test_submodules_used_in_nested_code_and_in_functions_reached_are_found() -> None:
    found = codec.submodules_used(codec._functions(both))
    assert {"xml.etree", "xml.etree.ElementTree", "xml.dom", "xml.dom.minidom"} <= set(found)
    assert codec.submodules_used(codec._functions(tags)) == ["xml.etree", "xml.etree.ElementTree"]
    assert codec.submodules_used(codec._functions(only_the_package)) == []


def test_a_module_in_a_closure_counts() -> None:
    package = xml

    def inner() -> object:
        return (lambda: package.etree.ElementTree.Element)()

    assert codec.submodules_used([inner]) == ["xml.etree", "xml.etree.ElementTree"]


def test_only_functions_sent_by_value_are_searched() -> None:
    assert codec._by_value(lambda x: x)
    assert not codec._by_value(both), "a module's function travels by name: its module imports what it needs"
    assert not codec._by_value(json.dumps)


def test_the_payload_names_the_submodules_and_a_failing_one_does_not_break_loading() -> None:
    def work(doc: list[str]) -> list[str]:
        return [xml.etree.ElementTree.fromstring(x).tag for x in doc]

    payload = pickle.loads(codec.dump_function(work))
    assert payload["submodules"] == ["xml.etree", "xml.etree.ElementTree"]
    payload["submodules"] = ["xml.no_such_module", "xml.etree"]
    func, _, _ = codec.load_function(cloudpickle.dumps(payload, protocol=codec.PROTOCOL))
    assert func(["<a/>"]) == ["a"]


@pytest.mark.parametrize("backend", ["eventlet", "threads"])
def test_a_script_function_carries_the_submodules_it_uses(r: redis.Redis, redis_server, backend: str) -> None:
    out = run("carry_submodules.py", redis_server.url, backend)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["pmap"] == shown["map"] == [[["a", "b"], ["a", "b"]], [["d"], ["d"]], [[], []]]


# B and C. Results that cannot be pickled: a clear failure, and nothing of eventlet.


def make_lock(x: int) -> dict[str, object]:
    return {"x": x, "lock": threading.Lock()}


async def make_lock_async(x: int) -> dict[str, object]:
    await asyncio.sleep(0)
    return make_lock(x)


def test_dump_result_says_what_could_not_be_sent_back() -> None:
    assert pickle.loads(codec.dump_result({"a": [1, "x"]})) == {"a": [1, "x"]}
    with pytest.raises(ResultNotPicklable) as caught:
        codec.dump_result({"lock": threading.Lock()})
    message = str(caught.value)
    assert message.startswith("The return value (a dict) could not be sent back: TypeError: cannot pickle ")
    assert "'_thread.lock' object" in message and "Return plain data" in message
    assert isinstance(caught.value, NbtasksError)
    record = pickle.loads(codec.failure_payload(caught.value))
    assert record["exc_type"] == "nbtasks.errors.ResultNotPicklable"
    # Here the test's frame leads; in a worker only nbtasks' frames do, and none is shown.
    assert record["traceback"].endswith(f"\nnbtasks.errors.ResultNotPicklable: {message}\n")
    assert "pickle" not in record["traceback"].replace(message, "") and "During handling" not in record["traceback"]
    with pytest.raises(ResultNotPicklable, match=r"^The return value \(a generator\) could not be sent back"):
        codec.dump_result(x for x in range(3))


REFUSED = """
import pickle, warnings
warnings.simplefilter("ignore")
import eventlet.lock, eventlet.timeout
from nbtasks import codec
from nbtasks.errors import ResultNotPicklable

def green_sleep():
    return eventlet.sleep  # from __main__: cloudpickle sends it by value, and eventlet by name
for value in (eventlet.lock.Lock(), [1, eventlet.timeout.Timeout], green_sleep):
    try:
        codec.dump_result(value)
    except ResultNotPicklable as exc:
        print(exc)
text = ["eventlet", b"greenlet", {"eventlet.lock": "Lock"}]
print(pickle.loads(codec.dump_result(text)) == text)
"""


def test_a_result_that_would_import_eventlet_in_the_caller_is_refused() -> None:
    # In a process of its own: this one must not import eventlet (see test_pmap).
    out = subprocess.run([sys.executable, "-c", REFUSED], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lock, timeout, function, exact = out.stdout.splitlines()
    assert lock.startswith("The return value (a Lock) could not be sent back: TypeError: cannot pickle 'Lock' object")
    assert timeout.startswith("The return value (a list) could not be sent back: TypeError: cannot pickle 'Timeout'")
    assert function.startswith("The return value (a function) could not be sent back: TypeError: cannot pickle module")
    assert exact == "True", "the word alone, in data, is no reference to eventlet"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, r: redis.Redis) -> str:
    return str(request.param)


def test_an_unpicklable_result_fails_the_same_on_every_backend(r: redis.Redis, backend: str) -> None:
    func = pick(backend, make_lock, make_lock_async)
    out = nbtasks.pmap(
        func, [1, 2], backend=backend, errors="return", processes=1, retries=2, retry_delay=0.01, progress=False
    )
    assert all(isinstance(f, nbtasks.Failure) for f in out)
    failure = out[0]
    assert failure.attempts == 1, "the same function would return the same kind of value: no retry"
    assert failure.exc_type == "nbtasks.errors.ResultNotPicklable"
    assert failure.message.startswith("The return value (a dict) could not be sent back: TypeError: cannot pickle")
    assert "lock" in failure.message.lower() and "Return plain data" in failure.message
    assert failure.traceback == f"nbtasks.errors.ResultNotPicklable: {failure.message}\n"
    with pytest.raises(nbtasks.TaskError) as caught:
        nbtasks.pmap(func, [1, 2], backend=backend, processes=1, progress=False)
    assert caught.value.failures[0].exc_type == "nbtasks.errors.ResultNotPicklable"
    assert "eventlet" not in sys.modules, "the caller imported eventlet"


def test_nothing_of_eventlet_reaches_the_caller(r: redis.Redis, redis_server) -> None:
    out = run("green_results.py", redis_server.url)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    lock, box, timeout, plain = shown["results"]
    assert lock[0] == box[0] == "nbtasks.errors.ResultNotPicklable"
    assert lock[1].startswith("The return value (a Lock) could not be sent back: TypeError: cannot pickle 'Lock'")
    assert box[1].startswith("The return value (a Box) could not be sent back: TypeError: cannot pickle 'Lock'")
    assert timeout[0] == "eventlet.timeout.Timeout"
    assert plain == "'plain'"
    assert not shown["eventlet"] and not shown["greenlet"], "eventlet was imported by the caller"
