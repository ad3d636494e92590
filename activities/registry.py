"""Every destination kind; adding a kind is one module plus one line in ``AnyDestinationConfig``.

A kind's module defines its config model (a :class:`DestinationConfig` with
``kind: Literal["name"]`` and a ``create()`` that builds the destination) and its destination
class. Listing the config model in the union below registers the kind: the config file, the
config reference and ``create_destination`` all follow from it, and mypy sees every kind's type.
"""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import Field

from activities import files, postgres, rest
from activities.base import Destination, DestinationConfig

AnyDestinationConfig = Annotated[
    rest.RestConfig | files.FileConfig | postgres.PostgresConfig,
    Field(discriminator="kind"),
]
"""Config of any registered kind, told apart by its ``kind`` field (use in pydantic models)."""


def _kind_name(config: type[DestinationConfig]) -> str:
    (name,) = get_args(config.model_fields["kind"].annotation)
    return str(name)


KINDS: dict[str, type[DestinationConfig]] = {
    _kind_name(config): config for config in get_args(get_args(AnyDestinationConfig)[0])
}
"""Config models of the registered kinds, by the value of their ``kind`` field."""


def create_destination(config: DestinationConfig) -> Destination:
    """Build the destination a validated config describes (not yet opened)."""
    return config.create()
