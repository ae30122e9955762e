"""zeroclaw.wire_json: JSON from the wire refused as ValueError, whatever its shape (found by the
hostile-input tests: nesting raised RecursionError, answered 500 with a traceback logged)."""

from __future__ import annotations

import math

import pytest

from zeroclaw import wire_json


def test_json_nested_too_deeply_is_a_value_error_not_a_recursion_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        wire_json.loads(b"[" * 100_000 + b"]" * 100_000)
    assert wire_json.loads(b"[" * 100 + b"]" * 100) is not None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1e999", "out of range"),
        ("-1e999", "out of range"),
        ("NaN", "NaN is not JSON"),
        ("Infinity", "Infinity is not JSON"),
        ("9" * 5000, "digits"),
        ('{"a": 1', "Expecting"),
    ],
)
def test_what_no_json_writer_sends_back_is_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        wire_json.loads(text)


def test_invalid_utf8_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="utf-8"):
        wire_json.loads(b'{"a": "\xff"}')


def test_ordinary_json_is_read_as_the_standard_library_reads_it() -> None:
    assert wire_json.loads('{"a": [1, 2.5, "x", null, true], "a": 2}') == {"a": 2}
    assert math.isclose(wire_json.loads("1e308"), 1e308)
