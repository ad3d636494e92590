"""The ``kubernetes`` section of the config: how ``courier deploy k8s`` lays Courier out.

Only the generator (``courier/ops/k8s.py``) reads it; the running processes ignore it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """A container's resource requests (and memory limit)."""

    cpu: str = Field(default="100m", pattern=_QUANTITY, description="CPU request, e.g. 250m.")
    memory: str = Field(
        default="256Mi", pattern=_QUANTITY, description="Memory request, e.g. 256Mi."
    )
    memory_limit: str | None = Field(
        default=None,
        pattern=_QUANTITY,
        description="Memory limit; unset: equal to the request. No CPU limit is set (a "
        "throttled worker misses heartbeats; requests already share CPU fairly).",
    )


class ProcessDeployment(_Strict):
    """A Deployment with a fixed number of replicas (ingest, the workflow worker)."""

    replicas: int = Field(default=1, ge=1, description="Pods to run.")
    resources: Resources = Field(default_factory=Resources, description="Requests per pod.")


class DestinationScaling(_Strict):
    """How KEDA scales one destination's workers on its task queue's backlog."""

    min_replicas: int = Field(
        default=1,
        ge=0,
        description="Fewest worker pods (KEDA minReplicaCount). 0 lets an idle destination "
        "scale to zero; its first record then waits for a pod to start.",
    )
    max_replicas: int = Field(
        default=5,
        ge=1,
        description="Most worker pods (KEDA maxReplicaCount). A destination with a rate_limit "
        "gains nothing from more pods than rate_limit × export latency / max_concurrency.",
    )
    target_backlog: int = Field(
        default=100,
        ge=1,
        description="Activity tasks waiting in the destination's queue per pod that KEDA aims "
        "for (the temporal scaler's targetQueueSize).",
    )
    activation_backlog: int = Field(
        default=0,
        ge=0,
        description="Backlog above which a destination scaled to zero gets its first pod "
        "(activationTargetQueueSize).",
    )
    resources: Resources = Field(default_factory=Resources, description="Requests per pod.")

    @model_validator(mode="after")
    def _min_below_max(self) -> DestinationScaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class Monitoring(_Strict):
    """Resources for the cluster's Prometheus Operator and Grafana (each off by default)."""

    prometheus_rules: bool = Field(
        default=False,
        description="Add a PrometheusRule (monitoring.coreos.com/v1, the Prometheus Operator) "
        "with Courier's alert rules (deploy/monitoring/alerts.yml; see docs/monitoring.md).",
    )
    grafana_dashboard: bool = Field(
        default=False,
        description="Add a ConfigMap holding Courier's Grafana dashboard "
        '(deploy/monitoring/dashboard.json), labelled grafana_dashboard: "1" for Grafana\'s '
        "dashboard sidecar.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels on those resources: what your Prometheus selects rules by "
        "(its ruleSelector, e.g. release: kube-prometheus-stack) or your Grafana sidecar "
        "looks for.",
    )


class KubernetesConfig(_Strict):
    """Kubernetes manifests made by ``courier deploy k8s``: images, replicas, scaling, secrets."""

    namespace: str = Field(default="courier", description="Kubernetes namespace of everything.")
    name: str = Field(
        default="courier",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=30,
        description="Prefix of every resource name (courier-ingest, courier-dest-NAME, …).",
    )
    image: str = Field(
        default="courier:0.1.0", description="Courier's container image (see the Dockerfile)."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="The containers' imagePullPolicy."
    )
    service_account: str | None = Field(
        default=None, description="ServiceAccount the pods run as; unset: the namespace default."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Plain values for ${NAME} placeholders of this file, set in the pods as "
        "environment variables and used to fill the manifests (e.g. COURIER_TEMPORAL_ADDRESS). "
        "Every other placeholder is read from the Secret `secret_name` (key NAME). Never put "
        "secrets here: they would be written into the manifests.",
    )
    secret_name: str = Field(
        default="courier-secrets",
        description="Secret holding the values of the config's other ${NAME} placeholders "
        "(tokens, passwords, DSNs); create it yourself, Courier never writes secret values.",
    )
    files_secret: str | None = Field(
        default=None,
        description="Secret mounted read-only at `files_dir`, one file per key: the TLS "
        "certificates and keys and the encryption key files the config names (their paths must "
        "be in `files_dir`). KEDA reads Temporal's CA and client certificate from it too.",
    )
    files_dir: str = Field(
        default="/etc/courier/files",
        pattern=r"^/",
        description="Where `files_secret` is mounted in every pod.",
    )
    metrics_port: int = Field(
        default=9400,
        ge=1024,
        le=65535,
        description="Port of /metrics (Courier's and the Temporal SDK's), /healthz and /readyz "
        "in each pod.",
    )
    keda_temporal_endpoint: str | None = Field(
        default=None,
        description="host:port KEDA's temporal scaler queries; unset: temporal.address.",
    )
    ui_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8233", "http://localhost:8233"],
        description="With temporal.encryption: origins of the Temporal UI allowed to call the "
        "codec server (CORS), e.g. https://temporal.example.com.",
    )
    codec_server_port: int = Field(
        default=8888, ge=1024, le=65535, description="Port of the codec server's Service."
    )
    ingest: ProcessDeployment = Field(
        default_factory=ProcessDeployment,
        description="Ingest pods. More replicas than the topics' partitions sit idle "
        "(courier deploy k8s --partitions N refuses that).",
    )
    workflow_worker: ProcessDeployment = Field(
        default_factory=ProcessDeployment,
        description="Pods of the workflow worker (ExportRecord/ExportRange and control workflows).",
    )
    destination_defaults: DestinationScaling = Field(
        default_factory=DestinationScaling,
        description="Scaling of every destination's workers unless `destinations` says otherwise.",
    )
    destinations: dict[str, DestinationScaling] = Field(
        default_factory=dict,
        description="Per destination name: the fields that differ from destination_defaults.",
    )
    monitoring: Monitoring = Field(
        default_factory=Monitoring,
        description="Alert rules and dashboard as Kubernetes resources (Prometheus Operator, "
        "Grafana sidecar).",
    )

    def scaling(self, destination: str) -> DestinationScaling:
        """The destination's scaling: its own fields over ``destination_defaults``."""
        own = self.destinations.get(destination)
        if own is None:
            return self.destination_defaults
        merged = self.destination_defaults.model_dump()
        merged.update(own.model_dump(include=own.model_fields_set))
        return DestinationScaling.model_validate(merged)
