"""Courier against a Kafka broker that speaks only SASL_SSL (SCRAM-SHA-512) and mTLS, for real.

One private broker for the module (:class:`courier_devtools.stack.secure_kafka.SecureKafka`: its own
free ports, a CA and certificate made with ``openssl``, SCRAM users written by Kafka's own
``kafka-storage format --add-scram``), next to the stack's broker and stopped by PID at the end.
The tests prove that ingest reads, commits and hands off over SASL_SSL, that workers fetch
records by reference over it (and over the broker's mutual-TLS listener), and that a wrong
password, an untrusted certificate, a certificate for another name or a missing client
certificate is one clear line naming the setting to check, in the ``courier ingest`` process and
in a worker's fetch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from temporalio.client import Client

from activities.errors import RetryableExportError
from courier.config.model import KafkaConfig, KafkaSecurity
from courier_devtools.certs import make_certificates
from courier_devtools.stack import StackSettings
from courier_devtools.stack.secure_kafka import SecureKafka
from courier_devtools.tls_proxy import tls_proxy
from ingest.fetch import KafkaRecordSource
from tests.integration.harness import courier_running, file_config, wait_for_workflows
from tests.integration.test_cli_errors import assert_plain, courier

pytestmark = pytest.mark.integration

USER = "courier"
PASSWORD = "courier-" + uuid.uuid4().hex[:12]
WRONG = "wrong-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
async def secure_kafka(
    stack: StackSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecureKafka]:
    """A private SASL_SSL-only broker with the SCRAM user ``courier``; stopped by PID after."""
    broker = SecureKafka(stack, tmp_path_factory.mktemp("secure-kafka"), users={USER: PASSWORD})
    await broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def create_topic(broker: SecureKafka, topic: str) -> None:
    admin = AIOKafkaAdminClient(**broker.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def produce(broker: SecureKafka, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**broker.client_options(), acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


async def committed(broker: SecureKafka, group: str, topic: str) -> int | None:
    consumer = AIOKafkaConsumer(**broker.client_options(), group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


async def test_plaintext_is_refused_by_the_sasl_ssl_listener(secure_kafka: SecureKafka) -> None:
    """The broker really is SASL_SSL only: a plaintext client gets nowhere."""
    from ingest.kafka import KafkaUnreachable, check_brokers

    with pytest.raises(KafkaUnreachable) as caught:
        await check_brokers(KafkaConfig(bootstrap_servers=secure_kafka.bootstrap, topics=["t"]))
    assert "it closed the connection when sent a Kafka request, or expects TLS" in str(caught.value)


async def test_ingest_and_fetch_by_reference_over_sasl_ssl(
    secure_kafka: SecureKafka,
    stack_settings: StackSettings,
    temporal_client: Client,
    unique: str,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    config = file_config(
        stack_settings,
        unique,
        out,
        kafka={
            "bootstrap_servers": secure_kafka.bootstrap,
            "security": secure_kafka.security(USER, PASSWORD),
        },
        # By reference: the workflows carry (topic ID, partition, offset) and the destination's
        # worker reads each record back from Kafka over SASL_SSL.
        ingest={"payloads": "reference"},
    )
    topic = config.kafka.topics[0]
    await create_topic(secure_kafka, topic)
    records = [(f"k{i}".encode(), json.dumps({"n": i}).encode()) for i in range(6)]
    await produce(secure_kafka, topic, records)

    async with courier_running(temporal_client, config):
        query = f"CourierTopic = '{topic}'"
        await wait_for_workflows(temporal_client, query, len(records), timeout=180)

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == [f"k{i}" for i in range(6)]
    assert await committed(secure_kafka, config.kafka.group, topic) == len(records)


def ingest_config(
    tmp_path: Path, stack: StackSettings, broker: SecureKafka, security: dict[str, Any]
) -> str:
    unique = uuid.uuid4().hex[:8]
    config = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "topics": [f"t-{unique}"],
            "group": f"g-{unique}",
            "security": security,
        },
        "temporal": {
            "address": stack.temporal_address,
            "workflow_task_queue": f"courier-workflows-{unique}",
        },
        "destinations": [
            {"name": f"file-{unique}", "kind": "file", "path": str(tmp_path / "out.jsonl")}
        ],
        "routes": {"default": f"file-{unique}"},
    }
    path = tmp_path / "courier.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def test_wrong_password_is_one_clear_line(
    secure_kafka: SecureKafka, stack: StackSettings, tmp_path: Path
) -> None:
    config = ingest_config(tmp_path, stack, secure_kafka, secure_kafka.security(USER, WRONG))
    where = secure_kafka.bootstrap
    async with courier("ingest", "-c", config) as run:
        _, line = await run.line_with(f"Kafka at {where} refused the SCRAM-SHA-512 login", 30)
        await run.terminate()
    assert line.endswith(
        f" WARNING courier.ingest: Kafka at {where} refused the SCRAM-SHA-512 login of user "
        "'courier' (Authentication failed during authentication due to invalid credentials "
        "with SASL mechanism SCRAM-SHA-512); check kafka.security.sasl_username and "
        "sasl_password; retrying in 1s"
    ), line
    text = run.text()
    assert WRONG not in text
    assert "aiokafka" not in text and "Traceback" not in text and "Unable to bootstrap" not in text
    assert_plain(run)


async def test_untrusted_certificate_is_one_clear_line(
    secure_kafka: SecureKafka, stack: StackSettings, tmp_path: Path
) -> None:
    security = secure_kafka.security(USER, PASSWORD, cafile=secure_kafka.certificates.other_ca)
    config = ingest_config(tmp_path, stack, secure_kafka, security)
    where = secure_kafka.bootstrap
    async with courier("ingest", "-c", config) as run:
        _, line = await run.line_with(f"Kafka at {where} presented a TLS certificate", 30)
        await run.terminate()
    assert (
        f" WARNING courier.ingest: Kafka at {where} presented a TLS certificate this client "
        "does not trust (self-signed certificate in certificate chain); check "
    ) in line, line
    assert line.endswith(
        "); check kafka.security.ssl_cafile (it must hold the CA that signed the brokers' "
        "certificates); retrying in 1s"
    ), line
    assert "Traceback" not in run.text() and "aiokafka" not in run.text()


@pytest.mark.parametrize("problem", ["wrong password", "untrusted certificate"])
async def test_fetch_by_reference_names_the_problem(
    secure_kafka: SecureKafka, problem: str
) -> None:
    wrong_password = problem == "wrong password"
    security = secure_kafka.security(
        USER,
        WRONG if wrong_password else PASSWORD,
        cafile=None if wrong_password else secure_kafka.certificates.other_ca,
    )
    kafka = KafkaConfig(bootstrap_servers=secure_kafka.bootstrap, topics=["t"], security=security)
    source = KafkaRecordSource(kafka)
    try:
        with pytest.raises(RetryableExportError) as caught:
            await source.fetch(topic="t", topic_id="x", partition=0, offsets=[0])
    finally:
        await source.close()
    message = str(caught.value)
    assert message.startswith("cannot read records from Kafka: Kafka at "), message
    if wrong_password:
        assert "refused the SCRAM-SHA-512 login of user 'courier'" in message
        assert message.endswith("check kafka.security.sasl_username and sasl_password")
        assert WRONG not in message
    else:
        assert "presented a TLS certificate this client does not trust" in message
        assert "check kafka.security.ssl_cafile" in message


async def test_certificate_for_another_name_is_one_clear_line(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    """A listener whose certificate (from a trusted CA) names another host."""
    from ingest.kafka import KafkaUnreachable, check_brokers

    other = make_certificates(tmp_path, server_names=("kafka.example.com",))
    target = (secure_kafka.host, secure_kafka.port)
    async with tls_proxy(target, cert=other.server_cert, key=other.server_key) as proxy:
        kafka = KafkaConfig(
            bootstrap_servers=proxy.address,
            topics=["t"],
            security=KafkaSecurity(protocol="SSL", ssl_cafile=other.ca),
        )
        with pytest.raises(KafkaUnreachable) as caught:
            await check_brokers(kafka)
    assert str(caught.value) == (
        f"the TLS certificate of Kafka at {proxy.address} is not valid for the name 127.0.0.1 "
        "(IP address mismatch, certificate is not valid for '127.0.0.1'.); check that "
        "kafka.bootstrap_servers uses a name the brokers' certificates were issued for"
    )


async def test_mutual_tls_fetch_and_a_missing_client_certificate(
    secure_kafka: SecureKafka, unique: str
) -> None:
    """The mTLS listener: with ``ssl_certfile``/``ssl_keyfile`` a worker reads a record by
    reference; without them, ingest's check is one line naming those settings."""
    from aiokafka.client import AIOKafkaClient

    from ingest.kafka import KafkaUnreachable, check_brokers
    from ingest.topic_ids import fetch_topic_ids

    topic = f"mtls-{unique}"
    await create_topic(secure_kafka, topic)
    await produce(secure_kafka, topic, [(b"k0", b'{"n": 0}')])
    client = AIOKafkaClient(**secure_kafka.client_options())
    await client.bootstrap()
    try:
        topic_id = (await fetch_topic_ids(client, [topic]))[topic]
    finally:
        await client.close()
    assert topic_id is not None

    c = secure_kafka.certificates
    with_cert = KafkaSecurity(
        protocol="SSL", ssl_cafile=c.ca, ssl_certfile=c.client_cert, ssl_keyfile=c.client_key
    )
    kafka = KafkaConfig(
        bootstrap_servers=secure_kafka.mtls_bootstrap, topics=[topic], security=with_cert
    )
    source = KafkaRecordSource(kafka)
    try:
        fetched = await source.fetch(topic=topic, topic_id=topic_id, partition=0, offsets=[0])
    finally:
        await source.close()
    record = fetched.records[0]
    assert record.key is not None and record.key.to_bytes() == b"k0"

    without = kafka.model_copy(update={"security": KafkaSecurity(protocol="SSL", ssl_cafile=c.ca)})
    with pytest.raises(KafkaUnreachable) as caught:
        await check_brokers(without)
    assert str(caught.value) == (
        f"Kafka at {secure_kafka.mtls_bootstrap} asks for a client certificate (mutual TLS) and "
        "none is configured (SSLV3_ALERT_BAD_CERTIFICATE); check kafka.security.ssl_certfile and "
        "ssl_keyfile"
    )
