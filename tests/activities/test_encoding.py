"""The record envelope embeds only JSON it can write back unchanged in meaning."""

from __future__ import annotations

import json

import pytest

from activities.encoding import blob_field, parse_json_text
from workflows.types import Blob


@pytest.mark.parametrize(
    "text",
    ["1e400", "-1e400", "NaN", "Infinity", "[" * 100_000 + "]" * 100_000, "{'a': 1}", ""],
    ids=["huge", "-huge", "nan", "infinity", "deep", "single-quotes", "empty"],
)
def test_values_json_cannot_round_trip_are_not_json(text: str) -> None:
    assert parse_json_text(text) == (False, None)


def test_a_value_beyond_a_double_is_embedded_as_text_not_infinity() -> None:
    field = blob_field("value", Blob.of(b'{"n": 1e400}'), embed_json=True)
    assert field == {"value": '{"n": 1e400}', "value_encoding": "text"}
    assert "Infinity" not in json.dumps(field)


def test_big_integers_and_ordinary_json_are_embedded() -> None:
    big = "1" + "0" * 400
    assert parse_json_text(f'{{"n": {big}, "x": 1.5}}') == (True, {"n": int(big), "x": 1.5})
