"""Every path root of a mapping is checked against the record's fields, without false alarms."""

from __future__ import annotations

from typing import Any

import jsonatapy
import pytest

from activities import mapping
from activities.files import FileConfig
from activities.jsonata_paths import Read, record_reads
from activities.mapping import RECORD_FIELDS, Expression
from courier.config.model import ConfigError, parse_config

FIELDS = ", ".join(RECORD_FIELDS)


def roots(text: str) -> list[str]:
    jsonatapy.compile(text)  # every case is valid JSONata
    return [read.name for read in record_reads(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Roots wherever the record is the context.
        ('{"id": vlaue.id}', ["vlaue"]),
        ('{"a": {"b": [tpoic, $count(vlaue)]}}', ["tpoic", "vlaue"]),
        ('$string(vlaue.id) & "-" & $substring(tpoic, 0, 2)', ["vlaue", "tpoic"]),
        ('value.total > 10 ? hedaers.a : "small"', ["value", "hedaers"]),
        ("value.items[kye = 1]", ["value"]),  # a predicate: each item is the context
        ("(value.a; offest)", ["value", "offest"]),
        ("[key, tpoic, 1..3]", ["key", "tpoic"]),
        ("-vlaue.n", ["vlaue"]),
        ("$map([1, 2], function($v) { kye & $v })", ["kye"]),  # a lambda sees its context
        ("`vlaue`.id", ["vlaue"]),
        ('value.id = 1 and kye = "k" or partition in [1, 2]', ["value", "kye", "partition"]),
        ("value.id / value.n / 2", ["value", "value"]),
        ('headers."x-trace"', ["headers"]),
        ("key.$uppercase()", ["key"]),
        ('value ~> $lookup("id")', ["value"]),
        # No roots: variables, functions, literals, later steps, other contexts.
        ("$", []),
        ("$$.value", []),
        ("$.value.id", []),
        ("($x := value.id; $x.a)", ["value"]),
        ("($f := function($n) { $n * 2 }; $f(3))", []),
        ("function($x, $y)<nn:n>{ $x + $y }(1, 2)", []),
        ("λ($x){ $x }(2)", []),
        ('"vlaue.id"', []),
        ("'tpoic'", []),
        ('{"vlaue": 1}', []),  # a key written as a string
        ("value.items.price", ["value"]),
        ('value.items{"total": price}', ["value"]),  # group-by: each item is the context
        ("value.items^(>price, <qty).price", ["value"]),  # sort terms: each item
        ("value.items.(price * qty)", ["value"]),
        ('value.{"p": price}', ["value"]),
        ("value.items.%.id", ["value"]),  # the parent of a step
        ("value.items#$i[$i > 0].price", ["value"]),
        ("value.items@$v.($v.price)", ["value"]),
        ('value ~> | items | {"seen": true} |', ["value"]),  # a transform sees matches
        ("**.price", []),
        ("*.id", []),
        ("$match(key, /ab+c/i)", ["key"]),
        ("value.n / 2", ["value"]),
        ("$substring(?, 0, 1)", []),
        ("1e3 + 2.5 - 0", []),
        ("true or false or null", []),
        ("/* value? no: */ key", ["key"]),
        ("value.n ?: 0", ["value"]),
    ],
)
def test_path_roots_are_the_names_read_from_the_record(text: str, expected: list[str]) -> None:
    assert roots(text) == expected


def test_a_read_knows_the_object_key_it_fills() -> None:
    assert record_reads('{"order": {"id": vlaue.id}}') == [Read("vlaue", 17, key="order.id")]
    assert record_reads("{id: value.id}") == [Read("id", 1, as_key=True), Read("value", 5)]


def test_a_typo_inside_an_object_fails_config_check_naming_it() -> None:
    with pytest.raises(ValueError) as caught:
        FileConfig(name="out", kind="file", path="/tmp/out.jsonl", line='{"id": vlaue.id}')
    assert (
        'destination out, line: mapping `{"id": vlaue.id}` reads \'vlaue\' (for "id"; did you '
        f"mean 'value'?), which a record does not have; its fields are {FIELDS}"
    ) in str(caught.value)


def test_every_unknown_name_is_named_once_on_one_line() -> None:
    with pytest.raises(ValueError) as caught:
        Expression('{"t": tpoic, "k": $uppercase(kye), "again": tpoic, "x": zzz}', "line")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        'mapping `{"t": tpoic, "k": $uppercase(kye), "again": tpoic, "x": zzz}` reads '
        "'tpoic' (for \"t\"; did you mean 'topic'?), 'kye' (for \"k\"; did you mean 'key'?) and "
        f"'zzz' (for \"x\"), which a record does not have; its fields are {FIELDS}"
    )


def test_an_unquoted_object_key_says_to_quote_it() -> None:
    # JSONata reads {id: …} as the record's field id, which is missing: the key is dropped.
    assert jsonatapy.evaluate("{id: 1}", {"value": {}}) == {}
    with pytest.raises(ValueError) as caught:
        Expression("{id: value.id}", "body.mapping")
    assert (
        "reads 'id' (as an object key, which is an expression: write \"id\" for text), which a "
        "record does not have"
    ) in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        '{"id": value.id, "at": timestamp, "n": $count(value.items[price > 0])}',
        '$map(value.items, function($i) { {"sku": $i.sku, "from": topic} })',
        'headers.region = "eu" and value.total > 1000',
        '$exists(key) ? key : "none"',
        'value.items^(>price)[0].{"top": name}',
    ],
)
def test_valid_mappings_pass(text: str) -> None:
    Expression(text, "body.mapping")


def test_a_when_rule_with_a_typo_in_a_condition_is_a_config_error() -> None:
    rule = {"when": 'value.total > 10 and hedaers.region = "eu"', "destination": "a"}
    data: dict[str, Any] = {
        "kafka": {"topics": ["t"]},
        "destinations": [{"name": "a", "kind": "file", "path": "/tmp/a"}],
        "routes": {"rules": [rule]},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ={})
    assert "routes.rules[0]: mapping" in str(caught.value)
    assert "reads 'hedaers' (did you mean 'headers'?)" in str(caught.value)


def test_an_expression_the_path_parser_cannot_read_falls_back_to_its_leading_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreadable(text: str) -> list[Read]:
        raise ValueError("unknown syntax")

    monkeypatch.setattr(mapping, "record_reads", unreadable)
    Expression('{"id": vlaue.id}', "line")  # not seen, not a false alarm either
    with pytest.raises(ValueError, match="reads 'vlaue' \\(did you mean 'value'\\?\\)"):
        Expression("vlaue.id", "line")
