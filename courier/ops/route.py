"""``courier route`` and ``courier map``: what Courier would do with one record, doing nothing.

``route`` names the destination a key goes to and the rule that decided; ``map`` shows what the
destination would receive (:mod:`courier.ops.preview`).
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from courier.config.model import CourierConfig
from courier.core.output import Output
from courier.ops import preview
from ingest.routing import Router
from workflows.types import KafkaRecord


def route(
    config: CourierConfig, key: str, record: Path | None, out: Output, *, as_json: bool = False
) -> int:
    """Print the destination of ``key`` and the rule that decided; exit 1 if it goes nowhere.

    ``record``: a JSON file describing the rest of the record, for rules with ``when``; without
    it those rules are skipped, with a warning. ``as_json``: print one JSON object instead.
    """
    router = Router(config.routes)
    whole = None
    if record is not None:
        try:
            whole = preview.record_from_file(record)
        except preview.PreviewError as err:
            return out.fail(str(err), 2)
    skipped_when = whole is None and router.needs_record
    if skipped_when:
        out.warning("rules with `when` need the whole record and were skipped; pass --record FILE")
    decision = router.decide(key.encode(), whole)
    if as_json:
        out.write_json(
            {
                "key": key,
                "action": decision.action,
                "destination": decision.destination,
                "rule": decision.rule,
                "when_rules_skipped": skipped_when,
            }
        )
    elif decision.action == "export":
        out.out.print(f"{decision.destination}\t[dim]{escape(decision.rule)}[/dim]")
    else:
        out.out.print(f"({decision.action})\t[dim]{escape(decision.rule)}[/dim]")
    return 0 if decision.action == "export" else 1


async def map_record(
    config: CourierConfig,
    destination: str,
    *,
    record: Path | None = None,
    at: tuple[str, int, int] | None = None,
    as_json: bool,
    out: Output,
) -> int:
    """Print what ``destination`` would receive for a record, or why its export would fail.

    The record is described by the JSON file ``record`` or read from Kafka ``at`` (topic,
    partition, offset). Exit 2 if it cannot be had, 1 if the mapping fails for it.
    """
    try:
        kafka_record: KafkaRecord
        if record is not None:
            kafka_record = preview.record_from_file(record)
        else:
            assert at is not None
            topic, partition, offset = at
            kafka_record = await preview.record_from_kafka(
                config.kafka, topic=topic, partition=partition, offset=offset
            )
        result = preview.preview(config, destination, kafka_record)
    except preview.PreviewError as err:
        return out.fail(str(err), 2)
    except preview.MappingError as err:
        return out.fail(f"{destination}: {err.reason}", 1)
    if as_json:
        out.write_json(result)
    else:
        out.write(preview.render(result) + "\n")
    return 0
