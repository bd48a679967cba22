"""A caller that a new process, with another PYTHONHASHSEED, must find again: classes
defined in __main__ (its instances are the inputs, and one is a global the function
reads) and sets of strings (a global the function reads, and inside every input).
Prints pmap's results, list(map)'s and how many items pmap executed."""

import json
import sys

from tasklog import executions, record

import nbtasks

redis_url, log_path = sys.argv[1], sys.argv[2]


class Word:
    def __init__(self, text, tags):
        self.text, self.tags = text, tags

    def weight(self):
        return len(self.text) + len(self.tags & STOPWORDS)


class Rules:
    def __init__(self, bonus, banned):
        self.bonus, self.banned = bonus, banned


STOPWORDS = {"the", "a", "an", "of", "to", "in", "and", "or", "is", "it"}
RULES = Rules(7, {"owl", "cats", "MAT"})


def work(word):
    record(log_path, word.text)
    return [word.weight() + RULES.bonus, word.text in STOPWORDS, sorted(word.tags & RULES.banned), sorted(word.tags)]


texts = ["the", "cat", "sat", "on", "a", "mat", "and", "it", "is", "of", "an", "owl"]
items = [Word(t, frozenset({t, t.upper(), t + "s", "a", "the", "or"})) for t in texts]
before = executions(log_path)
results = nbtasks.pmap(work, items, redis=redis_url, processes=1, concurrency=4, progress=False)
ran = executions(log_path) - before
print(json.dumps({"pmap": results, "map": list(map(work, items)), "ran": ran}))
