"""Turn a CustomResourceDefinition into the strict JSON schema tests validate manifests with.

    python -m courier_devtools.crd_schema keda.sh_scaledobjects.yaml v1alpha1 OUT.json "title"

Takes the version's ``openAPIV3Schema`` and, as kubeconform's strict mode does, forbids
properties an object does not declare (``additionalProperties: false`` wherever an object lists
its ``properties``), so a misspelt field fails instead of being ignored by the API server.
``metadata`` is left to the Kubernetes schemas (ObjectMeta).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strict(node: Any) -> None:
    """Add ``additionalProperties: false`` to every object schema that lists ``properties``."""
    if isinstance(node, dict):
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
        ):
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)


def crd_schema(crd: dict[str, Any], version: str, title: str) -> dict[str, Any]:
    """The strict JSON schema of ``version`` of the CRD."""
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    strict(schema)
    schema["properties"]["metadata"] = {"type": "object"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}


def main(argv: list[str]) -> None:
    """``SOURCE.yaml VERSION OUT.json TITLE``."""
    source, version, out, title = argv
    crd = yaml.safe_load(Path(source).read_text())
    Path(out).write_text(json.dumps(crd_schema(crd, version, title), indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
