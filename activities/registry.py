"""Every destination kind; adding a kind is one module plus one ``register`` line below.

A kind's module defines its config model (a :class:`DestinationConfig` with
``kind: Literal["name"]`` and a ``create()`` that builds the destination) and its destination
class. Registering the config model is all the rest of Courier needs: the config file, the
config reference, ``courier map``, ``courier deploy k8s`` and the workers ask the model (see the
hooks of :class:`DestinationConfig`), never the kind's name.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Annotated, Any, get_args

from pydantic import Discriminator, GetCoreSchemaHandler
from pydantic_core import CoreSchema

from activities import files, kafka, postgres, rest
from activities.base import Destination, DestinationConfig

DISCRIMINATOR = "kind"
"""The field of a destination's config that names its kind."""

KINDS: dict[str, type[DestinationConfig]] = {}
"""Config models of the registered kinds, by the value of their ``kind`` field, in order."""

_listeners: list[Callable[[], object]] = []


def kind_name(config: type[DestinationConfig]) -> str:
    """The value of the ``kind`` field a config model accepts (its ``Literal``)."""
    field = config.model_fields.get(DISCRIMINATOR)
    names = get_args(field.annotation) if field is not None else ()
    if len(names) != 1 or not isinstance(names[0], str):
        raise TypeError(f"{config.__name__}.kind must be one Literal name, e.g. Literal['smtp']")
    return names[0]


def register(config: type[DestinationConfig]) -> None:
    """Make a kind known by its config model; models that hold destinations are rebuilt."""
    name = kind_name(config)
    if KINDS.get(name, config) is not config:
        raise ValueError(f"destination kind {name!r} is already registered")
    KINDS[name] = config
    _changed()


def unregister(name: str) -> None:
    """Forget the kind called ``name`` (a kind registered for a while, e.g. by a test)."""
    del KINDS[name]
    _changed()


def on_change(listener: Callable[[], object]) -> None:
    """Call ``listener`` whenever a kind is registered or forgotten (e.g. to rebuild a model)."""
    _listeners.append(listener)


def _changed() -> None:
    for listener in _listeners:
        listener()


class RegisteredKinds:
    """Pydantic metadata: validate as the union of the kinds registered, told apart by ``kind``.

    The union is built when the model holding it is built; :func:`on_change` rebuilds that model
    when the registered kinds change.
    """

    def members(self) -> dict[str, type[DestinationConfig]]:
        """The kinds' config models, by kind name."""
        return dict(KINDS)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        """The tagged union of the registered kinds' config models."""
        models = tuple(KINDS.values())
        if len(models) == 1:
            return handler.generate_schema(models[0])
        union: Any = functools.reduce(operator.or_, models)
        return handler.generate_schema(Annotated[union, Discriminator(DISCRIMINATOR)])


AnyDestinationConfig = Annotated[DestinationConfig, RegisteredKinds()]
"""Config of any registered kind, told apart by its ``kind`` field (use in pydantic models)."""


def create_destination(config: DestinationConfig) -> Destination:
    """Build the destination a validated config describes (not yet opened)."""
    return config.create()


register(rest.RestConfig)
register(files.FileConfig)
register(postgres.PostgresConfig)
register(kafka.KafkaDestinationConfig)
