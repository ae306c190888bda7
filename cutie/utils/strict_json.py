"""JSON from outside, parsed strictly: a key repeated within one object is refused.

`json.loads` keeps the last of two equal keys without a word, so a BURST frame that names a track twice, or an
annotation document with a repeated field, silently loses data. The readers of untrusted annotation files (the
BURST, OVIS and SA-V converters, SA-1B's annotation files, YouTube-VOS's meta.json for eval, the empty-mask
lists) parse through `loads` here and report each repeat with its JSON location, e.g.
`sequences[2].segmentations[5]: duplicate key '3'`. Our own records read back from disk (conversion markers,
data-check caches, evaluated.json) parse here too: a repeated key means the file is not one this code wrote.

Speed: the check is an `object_pairs_hook` that only compares the built dict's length with the pair count; the
location is searched for (one walk over the document) only when a repeat was found.
"""

from __future__ import annotations

import json
import re

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class DuplicateKeyError(ValueError):
    """A document with repeated keys; `problems` holds one `<JSON location>: duplicate key '<k>'` per object."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more object(s) with a repeated key)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)


def loads(data: str | bytes) -> object:
    """`json.loads(data)`, but a key repeated in one object raises DuplicateKeyError (a ValueError, like any
    other malformed JSON) naming where."""
    repeats: dict[int, tuple[dict, str]] = {}  # id(object) -> (object, its first repeated key)

    def build(pairs: list[tuple[str, object]]) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs):  # rare: find which key repeats
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    repeats[id(obj)] = (obj, key)  # kept alive here, so its id stays unique
                    break
                seen.add(key)
        return obj

    doc = json.loads(data, object_pairs_hook=build)
    if repeats:
        raise DuplicateKeyError(_locate(doc, repeats))
    return doc


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _NAME.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _locate(doc: object, repeats: dict[int, tuple[dict, str]]) -> list[str]:
    """`<location>: duplicate key '<k>'` for each object of `repeats` reachable from `doc`, in document order. An
    unreachable one was the value of a repeated key itself, so its outer object is reported."""
    found = []
    stack: list[tuple[object, str]] = [(doc, "")]  # iterative: nesting may be as deep as the parser allows
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            if id(value) in repeats:
                found.append(f"{path or 'top level'}: duplicate key {repeats[id(value)][1]!r}")
            items: list = list(value.items())
        elif isinstance(value, list):
            items = list(enumerate(value))
        else:
            continue
        stack += [(v, _child(path, k)) for k, v in reversed(items) if isinstance(v, dict | list)]
    return found
