"""The strict JSON reader of untrusted annotation files: a key repeated in one object is refused, with its place."""

from __future__ import annotations

import json

import pytest

from cutie.utils.strict_json import DuplicateKeyError, loads


def test_a_document_without_repeats_parses_as_json_loads_does() -> None:
    text = '{"a": [1, {"b": null, "c": [[], {}]}], "d": {"e": 1.5, "f": "x"}, "g": true}'
    assert loads(text) == json.loads(text) and loads(text.encode()) == json.loads(text)
    assert loads("[1, 2]") == [1, 2] and loads('"s"') == "s"
    with pytest.raises(ValueError):  # other malformed JSON is still a ValueError, as before
        loads('{"a": 1')


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"a": 1, "a": 2}', "top level: duplicate key 'a'"),
        ('{"sequences": [{}, {}, {"segmentations": [{}, {"3": {}, "3": {}}]}]}',
         "sequences[2].segmentations[1]: duplicate key '3'"),
        ('{"s": [{"7": {"rle": "x", "rle": "y"}}]}', "s[0][\"7\"]: duplicate key 'rle'"),
        ('[{"x y": {"k": 1, "k": 1}}]', "[0][\"x y\"]: duplicate key 'k'"),
    ],
)  # fmt: skip
def test_a_repeated_key_is_refused_naming_the_object_and_the_key(text: str, where: str) -> None:
    with pytest.raises(DuplicateKeyError) as e:
        loads(text)
    assert e.value.problems == [where] and str(e.value) == where
    assert isinstance(e.value, ValueError)  # callers that report bad JSON report this too


def test_every_object_with_a_repeat_is_named_in_document_order() -> None:
    # the inner repeat lies in a value the outer repeat overwrote: only the outer one is reachable, and named
    text = '{"v": [{"id": 1, "id": 2}, {"n": 0}, {"n": 1, "n": 2}], "a": {"b": 1, "b": 2}, "a": 3}'
    with pytest.raises(DuplicateKeyError) as e:
        loads(text)
    assert e.value.problems == [
        "top level: duplicate key 'a'",
        "v[0]: duplicate key 'id'",
        "v[2]: duplicate key 'n'",
    ]
    assert str(e.value) == "top level: duplicate key 'a' (and 2 more object(s) with a repeated key)"
