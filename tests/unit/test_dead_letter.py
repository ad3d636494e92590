"""Dead letters: the config section, the entry's headers, and reading an entry back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from temporalio.testing import ActivityEnvironment
from typer.testing import CliRunner

from activities.source import Fetched
from courier.cli import app
from courier.config.model import ConfigError, parse_config
from courier.ops import dead_letters
from ingest import dead_letter as dl
from ingest.kafka import producer_options
from workflows.types import Blob, DeadLetterInput, Header, KafkaRecord


def config(dead_letter: dict[str, Any], **kafka: Any) -> Any:
    return parse_config(
        {
            "kafka": {"topics": ["orders"], "group": "g", **kafka},
            "destinations": [
                {"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/x"},
                {"name": "archive", "kind": "file", "path": "/tmp/x.jsonl"},
            ],
            "routes": {"default": "api"},
            "dead_letter": dead_letter,
        },
        environ={"PW": "s3cret"},
    )


def test_a_destination_has_its_own_topic_the_default_or_none() -> None:
    dead = config(
        {"topic": "dead", "destinations": {"api": "api-dead", "archive": None}}
    ).dead_letter
    assert dead.topic_for("api") == "api-dead"
    assert dead.topic_for("archive") is None
    assert dead.topic_for(None) == "dead"  # no route
    assert dead.topics() == {"dead", "api-dead"}
    assert config({}).dead_letter.topic_for("api") is None


def test_unknown_destinations_and_consumed_topics_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown destination 'nope'"):
        config({"destinations": {"nope": "x"}})
    with pytest.raises(ConfigError, match="'orders' is one ingest consumes"):
        config({"topic": "orders"})
    with pytest.raises(ConfigError, match="'orders-dead' is one ingest consumes"):
        config({"topic": "orders-dead"}, topics=[], topic_pattern="orders.*")
    with pytest.raises(ConfigError, match="dead_letter.topic"):
        config({"topic": "not a topic"})
    # On another cluster the name is free.
    config({"topic": "orders", "kafka": {"bootstrap_servers": "dlq:9093"}})


def test_another_cluster_has_its_own_brokers_and_security() -> None:
    cfg = config(
        {
            "topic": "dead",
            "kafka": {
                "bootstrap_servers": "dlq:9093",
                "security": {
                    "protocol": "SASL_PLAINTEXT",
                    "sasl_mechanism": "PLAIN",
                    "sasl_username": "u",
                    "sasl_password": "${PW}",
                },
            },
        }
    )
    options = producer_options(cfg.dead_letter.cluster(cfg.kafka))
    assert options["bootstrap_servers"] == "dlq:9093"
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_plain_password"] == "s3cret"
    assert "isolation_level" not in options
    same = producer_options(config({"topic": "dead"}).dead_letter.cluster(cfg.kafka))
    assert same["bootstrap_servers"] == cfg.kafka.bootstrap_servers


RECORD = KafkaRecord(
    topic="orders",
    topic_id="TID",
    partition=2,
    offset=17,
    key=Blob.of(b"o-1"),
    value=Blob.of(bytes([0, 255])),
    timestamp_ms=1_700_000_000_000,
    headers=[Header("trace", Blob.of(b"t")), Header("courier.destination", None)],
)
LETTER = DeadLetterInput(
    record=RECORD,
    by_reference=False,
    destination="api",
    idempotency_key="courier/g/orders@TID/2/17",
    error_type="PermanentExportError",
    reason="answered 400",
    attempts=3,
    range_id="courier/g/orders@TID/2/0/range",
)


def test_an_entry_reads_back_as_written() -> None:
    first = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    last = datetime(2026, 11, 27, 9, 5, 0, 123000, tzinfo=UTC)
    context = dl.FailureContext("courier/g/orders@TID/2/17", "run-1", 3, first, last)
    headers = dl.entry_headers(RECORD, dl.context_headers(LETTER, context, None))
    assert headers[:2] == [("trace", b"t"), ("courier.destination", None)], "own ones first"
    assert (dl.LAST_FAILURE, b"2026-11-27T09:05:00.123Z") in headers
    message = ConsumerRecord(
        "dead", 0, 5, 1_700_000_000_000, 0, b"o-1", bytes([0, 255]), None, 3, 2, headers
    )
    entry = dl.parse_entry(message)
    assert entry is not None
    assert (entry.entry, entry.coordinates) == ("dead/0/5", "orders/2/17")
    assert (entry.destination, entry.idempotency_key, entry.topic_id) == (
        "api",
        LETTER.idempotency_key,
        "TID",
    )
    assert (entry.error_type, entry.reason, entry.attempts) == (
        "PermanentExportError",
        "answered 400",
        3,
    )
    assert (entry.first_failure, entry.last_failure) == (first, last)
    assert entry.range_id == LETTER.range_id and entry.record_missing is None
    assert entry.headers == [("trace", b"t"), ("courier.destination", None)]
    assert (entry.key, entry.value, entry.timestamp_ms) == (
        b"o-1",
        bytes([0, 255]),
        1_700_000_000_000,
    )


def test_a_record_courier_did_not_write_is_not_an_entry() -> None:
    message = ConsumerRecord("dead", 0, 0, 0, 0, b"k", b"v", None, 1, 1, [("x", b"y")])
    assert dl.parse_entry(message) is None


class Source:
    def __init__(self, fetched: Fetched) -> None:
        self.fetched = fetched

    async def fetch(self, **_: Any) -> Fetched:
        return self.fetched


async def test_without_a_topic_nothing_is_written() -> None:
    letters = dl.DeadLetters(config({"destinations": {"archive": "x"}}), Source(Fetched({}, "")))
    assert await ActivityEnvironment().run(letters.dead_letter, LETTER) == (
        "no dead-letter topic configured"
    )


async def test_a_record_by_reference_that_is_gone_is_written_without_its_bytes() -> None:
    letters = dl.DeadLetters(config({"topic": "dead"}), Source(Fetched({}, "no longer in Kafka")))
    sent: list[tuple[str, KafkaRecord | None, list[tuple[str, bytes | None]]]] = []

    async def send(
        topic: str, record: KafkaRecord | None, context: list[tuple[str, bytes | None]], ts: int
    ) -> str:
        sent.append((topic, record, context))
        return f"{topic}/0/0"

    letters._send = send  # type: ignore[method-assign]
    by_reference = DeadLetterInput(**{**LETTER.__dict__, "by_reference": True, "record": RECORD})
    result = await ActivityEnvironment().run(letters.dead_letter, by_reference)
    assert result == "written to dead/0/0 without the record: no longer in Kafka"
    [(topic, record, context)] = sent
    assert topic == "dead" and record is None
    assert (dl.RECORD_MISSING, b"no longer in Kafka") in context


def entry(identity: str, *, reason: str, at: datetime, destination: str | None = "api") -> Any:
    context = dl.FailureContext(identity, "run", 1, at, at)
    letter = DeadLetterInput(
        record=RECORD,
        by_reference=False,
        destination=destination,
        idempotency_key=identity,
        error_type="PermanentExportError",
        reason=reason,
    )
    headers = dl.entry_headers(RECORD, dl.context_headers(letter, context, None))
    message = ConsumerRecord("dead", 0, 0, 0, 0, b"o-1", b"v", None, 3, 1, headers)
    return dl.parse_entry(message)


def test_entries_group_by_destination_and_reason_each_record_once() -> None:
    t0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    entries = [
        entry("a", reason="POST /x/o-1 answered 400", at=t0),
        entry("a", reason="POST /x/o-1 answered 400", at=t0 + timedelta(hours=1)),
        entry("b", reason="POST /x/o-1 answered 400", at=t0 + timedelta(minutes=5)),
        entry("c", reason="no route", at=t0, destination=None),
    ]
    latest = dead_letters.latest_by_identity(entries)
    assert sorted((e.idempotency_key, e.last_failure) for e in latest) == [
        ("a", t0 + timedelta(hours=1)),
        ("b", t0 + timedelta(minutes=5)),
        ("c", t0),
    ]
    groups = dead_letters.group_entries(latest)
    assert [(g.destination, g.count, g.reason) for g in groups] == [
        ("api", 2, "POST /x/{key} answered 400"),
        ("(no route)", 1, "no route"),
    ]
    assert groups[0].last_seen == t0 + timedelta(hours=1) and groups[0].example_id == "a"


def test_a_selection_takes_a_destination_and_a_window_of_last_failures() -> None:
    t0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    one = entry("a", reason="x", at=t0)
    assert dead_letters.Selection().matches(one)
    assert not dead_letters.Selection(destination="other").matches(one)
    assert dead_letters.Selection(since=t0, until=t0 + timedelta(seconds=1)).matches(one)
    assert not dead_letters.Selection(until=t0).matches(one)
    assert not dead_letters.Selection(since=t0 + timedelta(seconds=1)).matches(one)


def test_since_and_until_take_a_period_ago_or_a_time() -> None:
    now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    assert dead_letters.parse_when("90m", now=now) == now - timedelta(minutes=90)
    assert dead_letters.parse_when("2026-11-27T08:00:00Z") == now - timedelta(hours=1)
    assert dead_letters.parse_when("2026-11-27T08:00:00") == now - timedelta(hours=1)
    with pytest.raises(ValueError, match="neither a period"):
        dead_letters.parse_when("yesterday")
    assert dead_letters.replay_group(config({}), "r1") == "g-dead-letter-r1"


EXAMPLE = str(Path(__file__).parents[2] / "config" / "example.yaml")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--until", "1h"], "--until goes with --dead-letter TOPIC"),
        (["--dry-run"], "--dry-run goes with --dead-letter TOPIC"),
        (["--dead-letter", "d", "--query", "x"], "--query does not go with --dead-letter"),
        (["--dead-letter", "d", "--since", "soon"], "neither a period"),
        (["--dead-letter", "d", "--run-id", "a b"], "run ID 'a b' is not valid"),
    ],
)
def test_replay_options_of_the_dead_letter_are_checked(args: list[str], said: str) -> None:
    result = CliRunner().invoke(app, ["replay", "-c", EXAMPLE, *args])
    assert result.exit_code == 2 and said in result.output, result.output
