"""``courier deploy``: deployment manifests generated from the config file."""

from __future__ import annotations

from typing import Annotated

import typer

from courier.cli.common import DEFAULT_CONFIG_PATH, OUT, ConfigOption, fail

app = typer.Typer(help="Generate deployment manifests from the config file.", no_args_is_help=True)


@app.command("k8s")
def k8s(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    partitions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Partitions of the topics (the smallest count): refuse more ingest replicas.",
        ),
    ] = None,
) -> None:
    """Print Kubernetes manifests (YAML) for this config: ingest, workers, KEDA autoscaling.

    Example: courier deploy k8s -c courier.yaml > courier-k8s.yaml && kubectl apply -f
    courier-k8s.yaml. Secrets stay ${NAME} placeholders read from a Secret; the `kubernetes`
    section of the config sets the image, replicas and scaling.
    """
    # lazy: ops.k8s (the config models) takes ~0.3 s to import
    from courier.ops import k8s as ops

    try:
        source = config.read_text()
    except OSError as err:
        raise fail(
            f"cannot read config file {config}: {err.strerror}; pass --config FILE", 2
        ) from None
    try:
        manifests = ops.generate(source, partitions=partitions)
    except ops.DeployError as err:
        raise fail(f"{config}: {err}", 2) from None
    OUT.write(manifests.render(config.name))
