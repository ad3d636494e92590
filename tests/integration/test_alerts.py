"""The alert rules and the dashboard against a real Prometheus scraping a real Courier.

One scenario per module (the ``scenario`` fixture): Courier runs in this process with its
metrics served on a port of its own, Prometheus (Debian's binary, ``make prometheus``) scrapes
it every second and evaluates ``deploy/monitoring/alerts.yml`` every second, with every ``for:``
shortened to :data:`FOR` (the expressions are unchanged). A REST destination exports records,
refuses one for good (400), goes down (503) until its circuit opens, and comes back. The
fixture only records what Prometheus said and when; the tests judge it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socketserver
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import yaml
from temporalio.client import Client, WorkflowExecutionStatus

from courier.core.metrics import health_and_metrics_app
from courier_devtools.prometheus import Prometheus, binary
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import courier_running, pipeline_config, wait_for_workflows

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "monitoring" / "dashboard.json"
FOR = "2s"
FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}

pytestmark = pytest.mark.integration
T = TypeVar("T")


def shortened_rules(
    text: str, *, for_: str, replace: dict[str, dict[str, str]] | None = None
) -> str:
    """The rule file ``text`` with every ``for:`` set to ``for_``; ``replace`` maps an alert to
    substitutions in its expression (for thresholds of minutes), each of which must apply."""
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
            for old, new in (replace or {}).get(rule.get("alert", ""), {}).items():
                assert old in rule["expr"], f"{old!r} is not in {rule['alert']}'s expression"
                rule["expr"] = rule["expr"].replace(old, new)
    return yaml.safe_dump(doc, sort_keys=False)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scraped every second: no access log."""


@contextlib.contextmanager
def metrics_served() -> Iterator[int]:
    """This process's metrics (Courier's app, as ``--metrics-port`` serves it) on a free port,
    stopped at the end (``courier.core.metrics.serve`` runs until the process exits)."""
    server = make_server(
        "127.0.0.1", 0, health_and_metrics_app(), server_class=_Server, handler_class=_Quiet
    )
    thread = threading.Thread(target=server.serve_forever, name="test-metrics", daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


async def until(check: Callable[[], Awaitable[T | None]], timeout: float) -> T | None:
    """``check()``'s first truthy value within ``timeout`` seconds, else None (the tests judge)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.25)
    return None


@dataclass
class Scenario:
    """What Prometheus said during the scenario, and when (``time.time()`` seconds)."""

    prometheus: Prometheus
    destination: str
    started: float
    down: float = 0.0
    up: float = 0.0
    circuit_firing: dict[str, Any] | None = None
    circuit_firing_at: float | None = None
    circuit_cleared_at: float | None = None
    failing_firing: dict[str, Any] | None = None
    exported: int = 0
    notes: list[str] = field(default_factory=list)

    def timeline(self) -> str:
        """The scenario's times relative to the destination going down."""

        def at(t: float | None) -> str:
            return "never" if t is None else f"{t - self.down:+.1f}s"

        return (
            f"down at 0s; CourierCircuitOpen firing {at(self.circuit_firing_at)}; back up "
            f"{at(self.up)}; alert cleared {at(self.circuit_cleared_at)}"
        )


def alert_of(alerts: list[dict[str, Any]], name: str, destination: str) -> dict[str, Any] | None:
    """The active alert ``name`` of ``destination`` (other tests' destinations share the
    process's metrics), if any."""
    for alert in alerts:
        labels = alert["labels"]
        if labels.get("alertname") == name and labels.get("destination") == destination:
            return alert
    return None


@pytest.fixture(scope="module")
async def scenario(
    stack_settings: Any, temporal_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scenario]:
    if binary() is None:
        pytest.skip("no prometheus binary: run `make prometheus` (Debian's package under .tools/)")
    unique = uuid.uuid4().hex[:10]
    name = f"api-{unique}"
    workdir = tmp_path_factory.mktemp("prometheus")
    rules = workdir / "alerts.yml"
    rules.write_text(shortened_rules(RULES.read_text(), for_=FOR))
    async with Receiver() as receiver:
        receiver.script("/api", then=200)
        receiver.script("/api/bad", then=400)
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/api/{{key}}",
                    "rate_limit": 50,
                    "retry": FAST_RETRY,
                }
            ],
            routes={"default": name},
        )
        dead_letters = f"dl-{unique}"
        config = config.model_copy(
            update={"dead_letter": config.dead_letter.model_copy(update={"topic": dead_letters})}
        )
        topic = config.kafka.topics[0]
        bootstrap = stack_settings.kafka_bootstrap
        await create_topic(bootstrap, topic)
        await create_topic(bootstrap, dead_letters)
        with metrics_served() as port:
            prometheus = Prometheus(workdir, [f"127.0.0.1:{port}"], rule_files=[rules])
            await asyncio.to_thread(prometheus.start)
            try:
                seen = Scenario(prometheus, name, started=time.time())
                async with courier_running(temporal_client, config):
                    await scenario_steps(seen, receiver, temporal_client, bootstrap, topic)
                yield seen
            finally:
                await asyncio.to_thread(prometheus.stop)


async def scenario_steps(
    seen: Scenario, receiver: Receiver, client: Client, bootstrap: str, topic: str
) -> None:
    prometheus, name = seen.prometheus, seen.destination
    query = f"CourierDestination = '{name}'"

    async def active(alert: str) -> dict[str, Any] | None:
        return alert_of(await asyncio.to_thread(prometheus.alerts), alert, name)

    async def firing(alert: str) -> dict[str, Any] | None:
        found = await active(alert)
        return found if found and found["state"] == "firing" else None

    # Up: ten records exported, one refused for good.
    records = [(f"ok-{i}".encode(), json.dumps({"i": i}).encode()) for i in range(10)]
    await produce(bootstrap, topic, [*records, (b"bad-1", b"{}")])
    await wait_for_workflows(client, query, 10)
    await wait_for_workflows(client, query, 1, status=WorkflowExecutionStatus.FAILED)
    seen.failing_firing = await until(lambda: firing("CourierRecordsFailing"), timeout=60)

    # Down: every attempt answered 503 until the circuit opens.
    receiver.script("/api", then=503)
    seen.down = time.time()
    await produce(bootstrap, topic, [(f"late-{i}".encode(), b"{}") for i in range(20)])
    seen.circuit_firing = await until(lambda: firing("CourierCircuitOpen"), timeout=90)
    seen.circuit_firing_at = time.time() if seen.circuit_firing else None
    if seen.circuit_firing is None:
        seen.notes.append(f"alerts while down: {await asyncio.to_thread(prometheus.alerts)}")

    # Back up: the next probe is answered, the circuit closes, the backlog drains.
    receiver.script("/api", then=200)
    seen.up = time.time()

    async def cleared() -> bool:
        return await active("CourierCircuitOpen") is None

    if await until(cleared, timeout=90):
        seen.circuit_cleared_at = time.time()
    await wait_for_workflows(client, query, 30, timeout=120)
    seen.exported = receiver.effects("/api/ok-") + receiver.effects("/api/late-")
    # A few more scrapes, so rates over the last samples see the drained backlog.
    await asyncio.sleep(3)


async def test_the_rules_load_and_evaluate_without_errors(scenario: Scenario) -> None:
    groups = await asyncio.to_thread(scenario.prometheus.rules)
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    expected = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert set(rules) == expected
    unhealthy = {
        n: (r["health"], r.get("lastError")) for n, r in rules.items() if r["health"] != "ok"
    }
    assert not unhealthy, unhealthy


async def test_circuit_open_alert_fires_while_the_destination_is_down_and_clears_after(
    scenario: Scenario,
) -> None:
    print(f"\nalert timeline: {scenario.timeline()}")
    firing = scenario.circuit_firing
    assert firing is not None, f"CourierCircuitOpen never fired; {scenario.notes}"
    assert firing["labels"]["severity"] == "critical"
    assert firing["annotations"]["summary"].startswith(f"{scenario.destination}: circuit open")
    assert scenario.circuit_cleared_at is not None, (
        f"CourierCircuitOpen still active 90s after the destination came back: "
        f"{scenario.timeline()}"
    )
    assert scenario.exported == 30


async def test_permanent_failures_alert_fires(scenario: Scenario) -> None:
    firing = scenario.failing_firing
    assert firing is not None, "CourierRecordsFailing never fired after a record got a 400"
    assert firing["labels"] == {
        "alertname": "CourierRecordsFailing",
        "destination": scenario.destination,
        "severity": "warning",
    }


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def concrete(expr: str) -> str:
    """A panel's expression as Grafana sends it: every destination and topic, 15 s rates."""
    for variable in ("destination", "topic"):
        expr = expr.replace(f"${variable}", ".*").replace(f"${{{variable}}}", ".*")
    return expr.replace("$__rate_interval", "15s")


async def test_every_dashboard_query_returns_series(scenario: Scenario) -> None:
    prometheus = scenario.prometheus
    queries = dashboard_queries()
    assert len(queries) >= 15, queries
    end = time.time()
    empty: list[str] = []
    for title, expr in queries:
        series = await asyncio.to_thread(
            prometheus.query_range, concrete(expr), scenario.started, end, 1.0
        )
        if not series:
            empty.append(f"{title}: {expr}")
    assert not empty, f"dashboard queries with no series during the scenario: {empty}"


def test_shortened_rules_change_only_durations_and_named_thresholds() -> None:
    original = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    short = yaml.safe_load(
        shortened_rules(
            RULES.read_text(), for_="1s", replace={"CourierBacklogOld": {"> 900": "> 1"}}
        )
    )["groups"][0]["rules"]
    assert [r.get("for") for r in short] == ["1s"] * len(original)
    for before, after in zip(original, short, strict=True):
        if before["alert"] == "CourierBacklogOld":
            assert after["expr"] == before["expr"].replace("> 900", "> 1")
        else:
            assert after["expr"] == before["expr"]
    with pytest.raises(AssertionError, match="is not in"):
        shortened_rules(
            RULES.read_text(), for_="1s", replace={"CourierCircuitOpen": {"> 12345": "> 1"}}
        )
