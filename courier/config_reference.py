"""The config reference (docs/config-reference.md), rendered from the config models' fields."""

from __future__ import annotations

import types
import typing
from datetime import timedelta
from enum import Enum

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from activities.base import RetryConfig, TimeoutConfig
from activities.postgres import ColumnConfig
from activities.registry import KINDS, RegisteredKinds
from activities.rest import BodyMapping
from courier.config import (
    CourierConfig,
    IngestConfig,
    KafkaConfig,
    KafkaSecurity,
    RouteRule,
    RoutesConfig,
    TemporalConfig,
    TemporalTLS,
)
from courier.durations import format_duration

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top level", CourierConfig),
    ("kafka", KafkaConfig),
    ("kafka.security", KafkaSecurity),
    ("temporal", TemporalConfig),
    ("temporal.tls", TemporalTLS),
    ("routes", RoutesConfig),
    ("routes.rules[]", RouteRule),
    ("ingest", IngestConfig),
    *((f"destinations[] with kind: {name}", config) for name, config in KINDS.items()),
    ("destinations[].body (kind: rest, a mapped body)", BodyMapping),
    ("destinations[].columns.NAME (kind: postgres)", ColumnConfig),
    ("destinations[].retry", RetryConfig),
    ("destinations[].timeouts", TimeoutConfig),
]


def _type_name(annotation: object) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is timedelta:
        return "duration (500ms, 2s, 1m, 1h)"
    if origin is typing.Annotated:
        kinds = any(isinstance(meta, RegisteredKinds) for meta in args[1:])
        return "destination" if kinds else _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", repr(annotation))


def _default(field: typing.Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "see section" if isinstance(value, BaseModel) else f"`{value!r}`"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, timedelta):
        return f"`{format_duration(value)}`"
    if isinstance(value, Enum):
        value = value.value
    return f"`{value}`"


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Config reference",
        "",
        "Generated from the config models by `courier config reference`; do not edit by hand.",
        "`${NAME}` and `${NAME:-default}` in any string are filled from the environment.",
        "",
    ]
    for title, model in SECTIONS:
        out += [f"## {title}", "", (model.__doc__ or "").strip().splitlines()[0], ""]
        out += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            out.append(
                f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |"
            )
        out.append("")
    return "\n".join(out)
