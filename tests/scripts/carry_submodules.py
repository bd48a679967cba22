"""A caller whose __main__ function uses submodules only in nested code (a comprehension,
a lambda) and through a helper it calls. Prints pmap's results and list(map)'s."""

import json
import sys
import xml.dom.minidom
import xml.etree.ElementTree

import nbtasks


def tags(doc):
    return [xml.etree.ElementTree.fromstring(x).tag for x in doc]


def kinds(doc):
    return list(map(lambda x: xml.dom.minidom.parseString(x).documentElement.tagName, doc))


def work(doc):
    return tags(doc), kinds(doc)


redis_url, backend = sys.argv[1], sys.argv[2]
nbtasks.configure(redis_url=redis_url, warm=0)
docs = [["<a/>", "<b><c/></b>"], ["<d/>"], []]
results = nbtasks.pmap(work, docs, processes=1, backend=backend, progress=False, errors="return")
shown = [str(r) if isinstance(r, nbtasks.Failure) else r for r in results]
print(json.dumps({"pmap": shown, "map": list(map(work, docs))}))
