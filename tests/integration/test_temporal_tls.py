"""Courier's Temporal client settings (``temporal.tls``, ``temporal.api_key``) against TLS.

The stack's dev server speaks plaintext; :func:`courier_devtools.tls_proxy.tls_proxy` puts a
TLS-terminating proxy in front of it (127.0.0.1, a free port, a certificate of a CA made with
``openssl`` for this module), so the client sees a Temporal frontend that speaks TLS only — as
Temporal Cloud or a TLS load balancer does. The proxy also decodes the HTTP/2 request headers,
which shows the API key really travels (as ``authorization: Bearer …``, inside TLS).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from courier.config.model import TemporalConfig, TemporalTLS
from courier.temporal.client import TemporalUnreachable, connect
from courier_devtools.certs import Certificates, make_certificates
from courier_devtools.stack import StackSettings
from courier_devtools.tls_proxy import TLSProxy, tls_proxy
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import courier_running, file_config, wait_for_workflows
from tests.integration.test_cli_errors import courier

pytestmark = pytest.mark.integration

API_KEY = "test-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("temporal-tls"))


@pytest.fixture
async def proxy(stack: StackSettings, certificates: Certificates) -> AsyncIterator[TLSProxy]:
    """TLS on a free port of 127.0.0.1, forwarding to the dev server; closed after the test."""
    target = (stack.host, stack.temporal_port)
    async with tls_proxy(
        target, cert=certificates.server_cert, key=certificates.server_key
    ) as running:
        yield running


def temporal(proxy: TLSProxy, queue: str = "courier-workflows", **tls: object) -> TemporalConfig:
    return TemporalConfig(
        address=proxy.address,
        tls=TemporalTLS.model_validate(tls),
        api_key=SecretStr(API_KEY),
        workflow_task_queue=queue,
    )


async def test_courier_runs_over_tls_with_an_api_key(
    stack_settings: StackSettings,
    certificates: Certificates,
    proxy: TLSProxy,
    unique: str,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    config = file_config(stack_settings, unique, out)
    tls = temporal(proxy, config.temporal.workflow_task_queue, server_root_ca_cert=certificates.ca)
    config = config.model_copy(update={"temporal": tls})
    client = await connect(config.temporal)  # ingest, workers and this test: all through TLS

    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
    records = [(f"k{i}".encode(), json.dumps({"n": i}).encode()) for i in range(5)]
    await produce(stack_settings.kafka_bootstrap, topic, records)
    async with courier_running(client, config):
        # Generous: the shared dev server answers in ~0.5 s per call when the machine is busy.
        await wait_for_workflows(client, f"CourierTopic = '{topic}'", len(records), timeout=180)

    keys = sorted(json.loads(line)["key"] for line in out.read_text().splitlines())
    assert keys == [f"k{i}" for i in range(5)]
    # Every request (starts, polls, completions, queries) carried the key, and only over TLS.
    paths = {h.get(":path", "") for h in proxy.headers}
    assert any(p.endswith("/StartWorkflowExecution") for p in paths), paths
    assert any(p.endswith("/PollActivityTaskQueue") for p in paths), paths
    assert all(h.get("authorization") == f"Bearer {API_KEY}" for h in proxy.headers)


async def test_wrong_ca_is_one_clear_line(
    stack: StackSettings, certificates: Certificates, proxy: TLSProxy, tmp_path: Path
) -> None:
    config = tmp_path / "courier.yaml"
    unique = uuid.uuid4().hex[:8]
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": stack.kafka_bootstrap, "topics": [f"t-{unique}"]},
                "temporal": {
                    "address": proxy.address,
                    "tls": {"server_root_ca_cert": str(certificates.other_ca)},
                    "api_key": API_KEY,
                },
                "destinations": [{"name": "out", "kind": "file", "path": str(tmp_path / "o")}],
                "routes": {"default": "out"},
            }
        )
    )
    async with courier("status", "-c", str(config)) as run:
        code = await run.exited()
    assert code == 1
    assert [line for _, line in run.lines] == [
        f"error: Temporal at {proxy.address} presented a TLS certificate this client does not "
        "trust (unknown issuer); check temporal.tls.server_root_ca_cert (it must hold the CA "
        "that signed the server's certificate)"
    ]
    assert proxy.headers == []  # nothing, the key included, was sent to the untrusted server


async def test_wrong_server_name_is_one_clear_line(
    certificates: Certificates, proxy: TLSProxy
) -> None:
    config = temporal(proxy, server_root_ca_cert=certificates.ca, domain="temporal.example.com")
    with pytest.raises(TemporalUnreachable) as caught:
        await connect(config)
    assert str(caught.value) == (
        f"the TLS certificate of Temporal at {proxy.address} is not valid for the name "
        "temporal.example.com (it is for 127.0.0.1, localhost); check temporal.tls.domain (or "
        "the host in temporal.address)"
    )
    assert proxy.headers == []


async def test_the_right_server_name_is_accepted(
    certificates: Certificates, proxy: TLSProxy
) -> None:
    """``domain`` names the certificate to expect when the address is not it (here an IP)."""
    config = temporal(proxy, server_root_ca_cert=certificates.ca, domain="localhost")
    client = await connect(config)
    assert (await client.count_workflows("WorkflowId = 'none'")).count == 0


async def test_plaintext_client_at_a_tls_endpoint_points_at_temporal_tls(proxy: TLSProxy) -> None:
    with pytest.raises(TemporalUnreachable) as caught:
        await connect(TemporalConfig(address=proxy.address))
    message = str(caught.value)
    assert message.startswith(f"the server at {proxy.address} is not a Temporal server (")
    assert message.endswith("check temporal.address (or temporal.tls if the server expects TLS)")


async def test_mutual_tls(stack: StackSettings, certificates: Certificates) -> None:
    """A frontend that requires a client certificate: with one it serves, without one it is
    one line naming temporal.tls.client_cert."""
    target = (stack.host, stack.temporal_port)
    c = certificates
    async with tls_proxy(target, cert=c.server_cert, key=c.server_key, client_ca=c.ca) as proxy:
        with_cert = temporal(
            proxy,
            server_root_ca_cert=c.ca,
            client_cert=c.client_cert,
            client_private_key=c.client_key,
        )
        client = await connect(with_cert)
        assert (await client.count_workflows("WorkflowId = 'none'")).count == 0
        assert proxy.headers, "no request went through the proxy"

        with pytest.raises(TemporalUnreachable) as caught:
            await connect(temporal(proxy, server_root_ca_cert=c.ca))
    assert str(caught.value).startswith(f"Temporal at {proxy.address} ended the TLS connection (")
    assert str(caught.value).endswith(
        "); check temporal.tls.client_cert and client_private_key (mutual TLS) and temporal.api_key"
    )
