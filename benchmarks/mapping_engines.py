"""The candidate mapping engines side by side: one partner-shaped body from one record.

``python -m benchmarks.mapping_engines`` in an environment that has the candidates (not
Courier's dependencies; e.g. ``pip install jsonatapy==2.2.13 jsonata-python==0.7.1
jmespath==1.1.0 jinja2==3.1.6 jq==1.13.0``). Each engine compiles its spelling of the same
mapping once and evaluates it ``--number`` times per round, ``--rounds`` rounds; µs per
evaluation (wall, ``timeit``), min / median / max. Engines that are not installed are skipped.
docs/mappings.md quotes this output (engine speed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import timeit
from collections.abc import Callable
from typing import Any

RECORD: dict[str, Any] = {
    "key": "order-17",
    "topic": "orders",
    "partition": 0,
    "offset": 17,
    "timestamp": "2026-11-27T12:00:00.000Z",
    "headers": {"trace": "abc"},
    "value": {
        "id": 17,
        "customer": {"id": "c-9", "name": "Ada"},
        "lines": [{"sku": "A", "qty": 2, "price": 3.5}, {"sku": "B", "qty": 1, "price": 10}],
        "status": "paid",
    },
}
JSONATA = (
    '{"orderId": value.id, "customer": value.customer.id, '
    '"total": $sum(value.lines.(qty * price)), "skus": value.lines.sku, '
    '"status": $uppercase(value.status), '
    '"ref": topic & "/" & $string(partition) & "/" & $string(offset)}'
)
JMESPATH = (
    "{orderId: value.id, customer: value.customer.id, skus: value.lines[].sku, "
    "status: value.status, ref: join(`/`, [topic, to_string(partition), to_string(offset)])}"
)
JQ = (
    "{orderId: .value.id, customer: .value.customer.id, "
    "total: ([.value.lines[] | .qty * .price] | add), skus: [.value.lines[].sku], "
    'status: (.value.status | ascii_upcase), ref: "\\(.topic)/\\(.partition)/\\(.offset)"}'
)
JINJA = (
    "{% set ns = namespace(total=0) %}{% for l in value.lines %}"
    "{% set ns.total = ns.total + l.qty * l.price %}{% endfor %}"
    '{"orderId": {{ value.id | tojson }}, "customer": {{ value.customer.id | tojson }}, '
    '"total": {{ ns.total | tojson }}, '
    '"skus": {{ value.lines | map(attribute="sku") | list | tojson }}, '
    '"status": {{ value.status | upper | tojson }}, "ref": "{{ topic }}/{{ partition }}/'
    '{{ offset }}"}'
)


def engines() -> dict[str, tuple[str, Callable[[], Any]]]:
    """Installed engines: name → (what the mapping could not express, evaluate once)."""
    found: dict[str, tuple[str, Callable[[], Any]]] = {}
    try:
        jsonatapy: Any = importlib.import_module("jsonatapy")
        compiled = jsonatapy.compile(JSONATA, timeout=1000, max_stack_depth=200)
        found["jsonatapy (JSONata, Rust)"] = ("", lambda: compiled.evaluate(RECORD))
    except ImportError:
        pass
    try:
        jsonata: Any = importlib.import_module("jsonata")
        slow = jsonata.Jsonata(JSONATA)
        found["jsonata-python (JSONata, pure Python)"] = ("", lambda: slow.evaluate(RECORD))
    except ImportError:
        pass
    try:
        jmespath: Any = importlib.import_module("jmespath")
        search = jmespath.compile(JMESPATH)
        found["jmespath"] = (
            "no arithmetic (total), no upper-casing (status)",
            lambda: search.search(RECORD),
        )
    except ImportError:
        pass
    try:
        jq: Any = importlib.import_module("jq")
        program = jq.compile(JQ)
        found["jq (C, via bindings)"] = ("", lambda: program.input_value(RECORD).first())
    except ImportError:
        pass
    try:
        sandbox: Any = importlib.import_module("jinja2.sandbox")
        template = sandbox.ImmutableSandboxedEnvironment().from_string(JINJA)
        found["jinja2 (sandboxed), text parsed back as JSON"] = (
            "text, not data: JSON is written by hand (tojson per field) and parsed back",
            lambda: json.loads(template.render(**RECORD)),
        )
    except ImportError:
        pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    print("| engine | µs per record (min / median / max) | gaps |")
    print("| --- | ---: | --- |")
    for name, (gaps, evaluate) in engines().items():
        evaluate()
        times = [
            timeit.timeit(evaluate, number=args.number) / args.number * 1e6
            for _ in range(args.rounds)
        ]
        spread = f"{min(times):.1f} / **{statistics.median(times):.1f}** / {max(times):.1f}"
        print(f"| {name} | {spread} | {gaps} |")


if __name__ == "__main__":
    main()
