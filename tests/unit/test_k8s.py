"""``courier deploy k8s``: manifests that validate against Kubernetes' and KEDA's schemas.

Kubernetes kinds are checked with the schemas bundled in ``kubernetes-validate`` (strict: an
unknown field is an error); KEDA's ScaledObject and TriggerAuthentication with their CRDs'
schemas vendored in ``tests/k8s_schemas`` (KEDA v2.20.1), the PrometheusRule with the Prometheus
Operator's (v0.82.2). No cluster is needed.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from courier.cli import app
from courier.config.model import parse_config
from courier.ops.k8s import GRACE_MARGIN_S, DeployError, generate, k8s_name
from courier_devtools.prometheus import binary

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "config" / "example.yaml"
SCHEMAS = ROOT / "tests" / "k8s_schemas"
KUBERNETES_VERSION = "1.33.0"
CRD_SCHEMAS = {
    "ScaledObject": SCHEMAS / "scaledobject-keda-v1alpha1.json",
    "TriggerAuthentication": SCHEMAS / "triggerauthentication-keda-v1alpha1.json",
    "PrometheusRule": SCHEMAS / "prometheusrule-monitoring-v1.json",
}
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# The temporal scaler's metadata keys (KEDA v2.20.1, pkg/scalers/temporal_scaler.go).
TEMPORAL_TRIGGER_KEYS = {
    "endpoint",
    "endpointFromEnv",
    "namespace",
    "activationTargetQueueSize",
    "targetQueueSize",
    "taskQueue",
    "queueTypes",
    "workerDeploymentName",
    "workerDeploymentBuildId",
    "minConnectTimeout",
    "unsafeSsl",
    "tlsServerName",
}
runner = CliRunner()


def validate(doc: dict[str, Any]) -> None:
    """Raise if ``doc`` does not validate against its kind's schema (none may be missing)."""
    if doc["apiVersion"].startswith(CRD_GROUPS):
        schema = json.loads(CRD_SCHEMAS[doc["kind"]].read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


CONFIG = """
kafka:
  bootstrap_servers: ${KAFKA_BOOTSTRAP}
  topics: [orders]
  security:
    protocol: SASL_SSL
    sasl_mechanism: SCRAM-SHA-512
    sasl_username: courier
    sasl_password: ${KAFKA_PASSWORD}
temporal:
  address: ${TEMPORAL_ADDRESS:-127.0.0.1:7233}
  namespace: prod
  api_key: ${TEMPORAL_API_KEY}
  encryption:
    current_key: k1
    keys: [{id: k1, key: "${COURIER_KEY}"}]
workers: {graceful_shutdown: 45s}
destinations:
  - name: Orders_API
    kind: rest
    url: https://api.example.com/orders/{key}
    headers: {Authorization: "Bearer ${ORDERS_TOKEN}"}
    rate_limit: 5
  - name: warehouse
    kind: postgres
    dsn: ${WAREHOUSE_DSN}
    table: events
  - name: archive
    kind: file
    path: spool/archive.jsonl
routes: {default: warehouse}
kubernetes:
  namespace: courier-prod
  image: registry.example.com/courier:1.2.3
  ui_origins: [https://temporal.example.com]
  env:
    KAFKA_BOOTSTRAP: kafka.kafka.svc:9092
    TEMPORAL_ADDRESS: temporal-frontend.temporal.svc:7233
  ingest: {replicas: 3, resources: {cpu: 500m, memory: 512Mi, memory_limit: 1Gi}}
  destination_defaults: {min_replicas: 1, max_replicas: 4, target_backlog: 50}
  destinations:
    Orders_API: {max_replicas: 2}
    warehouse: {min_replicas: 0, activation_backlog: 5}
"""


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return documents(generate(CONFIG).render())


def test_every_manifest_validates_against_its_schema(docs: list[dict[str, Any]]) -> None:
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "Namespace",
        "PersistentVolumeClaim",
        "ScaledObject",
        "Service",
        "TriggerAuthentication",
    ]
    for doc in docs:
        validate(doc)


def test_the_example_config_validates(tmp_path: Path) -> None:
    # The example's demo credentials have defaults, for local runs; deploy refuses those.
    refused = runner.invoke(app, ["deploy", "k8s", "-c", str(EXAMPLE)])
    assert refused.exit_code == 2
    assert (
        "destinations[0].headers.Authorization (in the default of ${ORDERS_API_TOKEN}), "
        "destinations[3].dsn (its password, in the default of ${COURIER_POSTGRES_DSN}): written "
        "into the config file, which becomes a ConfigMap"
    ) in refused.output
    config = tmp_path / "courier.yaml"
    config.write_text(
        re.sub(
            r"\$\{(ORDERS_API_TOKEN|COURIER_POSTGRES_DSN):-[^}]*\}", r"${\1}", EXAMPLE.read_text()
        )
    )
    result = runner.invoke(app, ["deploy", "k8s", "-c", str(config)])
    assert result.exit_code == 0, result.output
    example = documents(result.stdout)
    assert "&id0" not in result.stdout, "no YAML aliases: plain manifests for reviewers"
    for doc in example:
        validate(doc)
    names = {d["name"] for d in yaml.safe_load(EXAMPLE.read_text())["destinations"]}
    scaled = by_kind(example, "ScaledObject")
    assert {so["metadata"]["labels"]["courier.dev/destination"] for so in scaled.values()} == names


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["spec"].__setitem__("replicas", "three"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("livnessProbe", {}),
    ],
)
def test_the_validator_catches_a_broken_deployment(
    docs: list[dict[str, Any]], break_it: Any
) -> None:
    deployment = json.loads(json.dumps(by_kind(docs, "Deployment")["courier-ingest"]))
    break_it(deployment)
    with pytest.raises(jsonschema.ValidationError):
        validate(deployment)


def test_the_validator_catches_a_broken_scaled_object(docs: list[dict[str, Any]]) -> None:
    scaled = json.loads(json.dumps(next(iter(by_kind(docs, "ScaledObject").values()))))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        validate(scaled)


def test_one_worker_deployment_and_scaled_object_per_destination(
    docs: list[dict[str, Any]],
) -> None:
    names = (
        "KAFKA_PASSWORD",
        "ORDERS_TOKEN",
        "TEMPORAL_API_KEY",
        "WAREHOUSE_DSN",
        "KAFKA_BOOTSTRAP",
        "COURIER_KEY",
    )
    cfg = parse_config(yaml.safe_load(CONFIG), environ=dict.fromkeys(names, "x"))
    deployments = by_kind(docs, "Deployment")
    scaled = by_kind(docs, "ScaledObject")
    expected = {  # name: (min, max, target, activation)
        "Orders_API": (1, 2, 50, 0),
        "warehouse": (0, 4, 50, 5),
        "archive": (1, 1, 50, 0),  # a file destination: one pod at most
    }
    assert len(scaled) == len(cfg.destinations)
    for dest in cfg.destinations:
        name = k8s_name("courier", "dest", dest.name)
        deployment, so = deployments[name], scaled[name]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][:4] == ["courier", "worker", "--destination", dest.name]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        assert so["spec"]["scaleTargetRef"] == {"name": name}
        low, high, target, activation = expected[dest.name]
        assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (low, high)
        [trigger] = so["spec"]["triggers"]
        assert trigger["type"] == "temporal"
        assert set(trigger["metadata"]) <= TEMPORAL_TRIGGER_KEYS
        assert trigger["metadata"]["taskQueue"] == dest.task_queue
        assert trigger["metadata"]["queueTypes"] == "activity"
        assert trigger["metadata"]["namespace"] == "prod"
        assert trigger["metadata"]["endpoint"] == "temporal-frontend.temporal.svc:7233"
        assert trigger["metadata"]["targetQueueSize"] == str(target)
        assert trigger["metadata"]["activationTargetQueueSize"] == str(activation)
        assert trigger["authenticationRef"] == {"name": "courier-temporal"}
    assert k8s_name("courier", "dest", "Orders_API") != k8s_name("courier", "dest", "orders-api")
    auth = by_kind(docs, "TriggerAuthentication")["courier-temporal"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "apiKey", "name": "courier-secrets", "key": "TEMPORAL_API_KEY"}
    ]


def test_ingest_and_workflow_worker(docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(docs, "Deployment")
    ingest = deployments["courier-ingest"]
    assert ingest["spec"]["replicas"] == 3
    container = ingest["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["courier", "ingest"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"memory": "1Gi"},
    }
    workflows = deployments["courier-workflows"]
    assert workflows["spec"]["replicas"] == 1
    assert workflows["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "courier",
        "worker",
        "--workflows",
    ]


def test_probes_grace_and_config_in_every_pod(docs: list[dict[str, Any]]) -> None:
    configmap = by_kind(docs, "ConfigMap")["courier-config"]
    assert configmap["data"]["courier.yaml"] == CONFIG, "the file as written, placeholders kept"
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        if name == "courier-codec-server":
            continue  # no metrics port: tested below
        assert pod["terminationGracePeriodSeconds"] == math.ceil(45) + GRACE_MARGIN_S
        [container] = pod["containers"]
        command = container["command"]
        port = int(command[command.index("--metrics-port") + 1])
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        env = {e["name"]: e for e in container["env"]}
        assert env["COURIER_METRICS_HOST"]["value"] == "0.0.0.0"
        assert command[command.index("--config") + 1] == env["COURIER_CONFIG"]["value"]
        assert container["resources"]["requests"].keys() == {"cpu", "memory"}
        mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert env["COURIER_CONFIG"]["value"].startswith(mount["config"] + "/")
        assert pod["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]


def test_placeholders_come_from_the_secret_or_plain_env(docs: list[dict[str, Any]]) -> None:
    container = by_kind(docs, "Deployment")["courier-ingest"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKA_BOOTSTRAP"] == {"name": "KAFKA_BOOTSTRAP", "value": "kafka.kafka.svc:9092"}
    for secret in (
        "KAFKA_PASSWORD",
        "TEMPORAL_API_KEY",
        "ORDERS_TOKEN",
        "WAREHOUSE_DSN",
        "COURIER_KEY",
    ):
        assert env[secret]["valueFrom"] == {
            "secretKeyRef": {"name": "courier-secrets", "key": secret}
        }


def test_secret_values_in_the_environment_never_reach_the_manifests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = {
        "KAFKA_PASSWORD": "kafka-pw-5f1e",
        "TEMPORAL_API_KEY": "tk-93ab",
        "ORDERS_TOKEN": "tok-77c2",
        "WAREHOUSE_DSN": "postgresql://u:pg-pw-0d4e@db/x",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    text = generate(CONFIG).render()
    for value in secrets.values():
        assert value not in text


def test_file_destination_gets_a_volume_for_its_directory(docs: list[dict[str, Any]]) -> None:
    name = k8s_name("courier", "dest", "archive")
    deployment = by_kind(docs, "Deployment")[name]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/app/spool"  # relative paths are relative to the image's WORKDIR
    claim = pod["volumes"][1]["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind(docs, "PersistentVolumeClaim")


def test_more_ingest_replicas_than_partitions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="ingest.replicas is 3 but the topics have 2 partitions"):
        generate(CONFIG, partitions=2)
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    result = runner.invoke(app, ["deploy", "k8s", "-c", str(config), "--partitions", "2"])
    assert result.exit_code == 2
    assert "lower it to 2" in result.output
    assert len(documents(generate(CONFIG, partitions=3).render())) > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("    warehouse: {", "    nope: {max_replicas: 1}\n    warehouse: {"),
            "kubernetes.destinations.nope: unknown destination",
        ),
        (
            ("destination_defaults: {min_replicas: 1,", "destination_defaults: {min_replicas: 9,"),
            "min_replicas (9) is above max_replicas (4)",
        ),
        (
            ("    TEMPORAL_ADDRESS: temporal-frontend.temporal.svc:7233\n", ""),
            None,  # the default address is used
        ),
        (
            ("  env:\n", "  env:\n    TEMPORAL_API_KEY: x\n"),
            "kept in the Secret (not in kubernetes.env)",
        ),
    ],
)
def test_bad_kubernetes_settings_are_one_clear_error(
    change: tuple[str, str], message: str | None
) -> None:
    text = CONFIG.replace(*change)
    assert text != CONFIG
    if message is None:
        generate(text)
        return
    with pytest.raises(DeployError, match=re.escape(message)):
        generate(text)


def test_unresolvable_keda_endpoint_is_refused() -> None:
    text = CONFIG.replace("${TEMPORAL_ADDRESS:-127.0.0.1:7233}", "${TEMPORAL_ADDRESS}").replace(
        "    TEMPORAL_ADDRESS: temporal-frontend.temporal.svc:7233\n", ""
    )
    with pytest.raises(DeployError, match="KEDA cannot resolve"):
        generate(text)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (("${KAFKA_PASSWORD}", "hunter2-kafka"), "kafka.security.sasl_password"),
        (
            ("Bearer ${ORDERS_TOKEN}", "Bearer hunter2-token"),
            "destinations[0].headers.Authorization",
        ),
        (("${WAREHOUSE_DSN}", "postgresql://u:hunter2-pg@db/x"), "destinations[1].dsn"),
        (("api_key: ${TEMPORAL_API_KEY}", "api_key: hunter2-api"), "temporal.api_key"),
        (('key: "${COURIER_KEY}"', "key: hunter2-key"), "temporal.encryption.keys[0].key"),
    ],
)
def test_literal_credentials_are_refused_without_repeating_them(
    change: tuple[str, str], path: str
) -> None:
    with pytest.raises(DeployError) as caught:
        generate(CONFIG.replace(*change))
    assert path in str(caught.value) and "becomes a ConfigMap" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_with_encryption_the_codec_server_runs_behind_a_service(
    docs: list[dict[str, Any]],
) -> None:
    deployment = by_kind(docs, "Deployment")["courier-codec-server"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["courier", "codec-server"]
    assert command[command.index("--ui-origin") + 1] == "https://temporal.example.com"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    env = {e["name"]: e for e in container["env"]}
    assert env["COURIER_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "COURIER_KEY"
    service = by_kind(docs, "Service")["courier-codec-server"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == int(command[command.index("--port") + 1])
    encryption = '  encryption:\n    current_key: k1\n    keys: [{id: k1, key: "${COURIER_KEY}"}]\n'
    assert encryption in CONFIG
    plain = documents(generate(CONFIG.replace(encryption, "")).render())
    assert not any(d["kind"] == "Service" for d in plain)


TLS_CONFIG = """
kafka:
  bootstrap_servers: kafka:9093
  topics: [orders]
  security: {protocol: SSL, ssl_cafile: /etc/courier/files/kafka-ca.pem}
temporal:
  address: my-ns.tmprl.example:7233
  namespace: my-ns
  tls:
    server_root_ca_cert: /etc/courier/files/ca.pem
    client_cert: /etc/courier/files/client.pem
    client_private_key: /etc/courier/files/client.key
    domain: my-ns.tmprl.example
  encryption:
    current_key: k1
    keys: [{id: k1, file: /etc/courier/files/k1.key}]
destinations: [{name: api, kind: rest, url: "https://api.example.com/{key}"}]
routes: {default: api}
kubernetes: {files_secret: courier-files}
"""


def test_files_the_config_reads_come_from_a_mounted_secret() -> None:
    text = generate(TLS_CONFIG).render()
    assert "must hold the files ca.pem, client.key, client.pem, k1.key, kafka-ca.pem" in text
    docs = documents(text)
    for doc in docs:
        validate(doc)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(pods) == 5  # setup, ingest, workflows, codec server, one destination
    for pod in pods:
        [container] = pod["containers"]
        assert {"name": "files", "mountPath": "/etc/courier/files", "readOnly": True} in (
            container["volumeMounts"]
        )
        assert {"name": "files", "secret": {"secretName": "courier-files"}} in pod["volumes"]
    auth = by_kind(docs, "TriggerAuthentication")["courier-temporal"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "ca", "name": "courier-files", "key": "ca.pem"},
        {"parameter": "cert", "name": "courier-files", "key": "client.pem"},
        {"parameter": "key", "name": "courier-files", "key": "client.key"},
    ]
    [trigger] = by_kind(docs, "ScaledObject")["courier-dest-api"]["spec"]["triggers"]
    assert trigger["metadata"]["tlsServerName"] == "my-ns.tmprl.example"
    assert trigger["authenticationRef"] == {"name": "courier-temporal"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("kubernetes: {files_secret: courier-files}", ""),
            "kafka.security.ssl_cafile, temporal.tls.server_root_ca_cert",
        ),
        (
            ("/etc/courier/files/k1.key", "/keys/k1.key"),
            "temporal.encryption.keys[0].file: in a pod the files",
        ),
    ],
)
def test_files_without_their_secret_are_one_clear_error(
    change: tuple[str, str], message: str
) -> None:
    with pytest.raises(DeployError, match=re.escape(message)):
        generate(TLS_CONFIG.replace(*change))


MONITORING = ROOT / "deploy" / "monitoring"


def test_no_monitoring_resources_unless_asked(docs: list[dict[str, Any]]) -> None:
    assert not [d for d in docs if d["kind"] == "PrometheusRule"]
    assert set(by_kind(docs, "ConfigMap")) == {"courier-config"}


def with_monitoring(text: str) -> str:
    return text + (
        "  monitoring:\n"
        "    prometheus_rules: true\n"
        "    grafana_dashboard: true\n"
        "    labels: {release: kube-prometheus-stack}\n"
    )


def test_prometheus_rule_and_dashboard_when_asked(tmp_path: Path) -> None:
    manifests = generate(with_monitoring(CONFIG))
    docs = documents(manifests.render())
    for doc in docs:
        validate(doc)
    [rule] = by_kind(docs, "PrometheusRule").values()
    assert rule["metadata"]["name"] == "courier-alerts"
    assert rule["metadata"]["namespace"] == "courier-prod"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The rules as deploy/monitoring has them, through the YAML the manifests are written in.
    assert rule["spec"] == yaml.safe_load((MONITORING / "alerts.yml").read_text())
    dashboard = by_kind(docs, "ConfigMap")["courier-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert json.loads(dashboard["data"]["courier.json"]) == json.loads(
        (MONITORING / "dashboard.json").read_text()
    )
    assert any("PrometheusRule needs the Prometheus Operator" in n for n in manifests.notes)


@pytest.mark.skipif(binary("promtool") is None, reason="no promtool: run `make prometheus`")
def test_the_prometheus_rule_is_a_valid_rule_file(tmp_path: Path) -> None:
    docs = documents(generate(with_monitoring(CONFIG)).render())
    [rule] = by_kind(docs, "PrometheusRule").values()
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    promtool = binary("promtool")
    assert promtool is not None
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    count = sum(len(g["rules"]) for g in rule["spec"]["groups"])
    assert f"SUCCESS: {count} rules found" in checked.stdout
