"""Every destination kind by name; adding a kind is one module plus one line in ``KINDS``."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from activities import files, postgres, rest
from activities.base import Destination, DestinationConfig, DestinationKind

KINDS: dict[str, DestinationKind] = {
    "rest": rest.KIND,
    "file": files.KIND,
    "postgres": postgres.KIND,
}
"""Destination kinds by the value of their config's ``kind`` field."""

AnyDestinationConfig: Any = Annotated[
    Union[tuple(kind.config for kind in KINDS.values())],  # noqa: UP007 (built at runtime)
    Field(discriminator="kind"),
]
"""Config of any registered kind, told apart by its ``kind`` field (use in pydantic models)."""


def create_destination(config: DestinationConfig) -> Destination:
    """Build the destination a validated config describes (not yet opened)."""
    try:
        kind = KINDS[config.kind]
    except KeyError:
        raise ValueError(f"unknown destination kind {config.kind!r}; known: {sorted(KINDS)}")
    return kind.create(config)
