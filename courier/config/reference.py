"""The config reference (docs/config-reference.md), made by walking the config models.

Every model reachable from :class:`CourierConfig` gets a section: through nested fields, lists,
dicts and unions, and through every registered destination kind. A field that holds a model
links to that model's section, so no row can point at a section that is not there, and a new
kind or sub-model needs no edit here. Kinds from plugins (``activities.registry.PLUGINS``) are
in it where they are installed, each saying which package it comes from; ``plugins=False``
leaves them out (docs/config-reference.md is the reference of Courier's own kinds).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from activities.base import DestinationConfig
from activities.registry import DISCRIMINATOR, PLUGINS, Plugin, RegisteredKinds
from courier.config.model import CourierConfig
from courier.core.durations import format_duration

ROOT_TITLE = "Top level"

_Under = tuple[str, str] | None
"""The union member a section lies under, as (the union's path, the member's label)."""


@dataclass
class Section:
    """One model's section: where in the file it is used and under which union members."""

    model: type[BaseModel]
    paths: list[str]
    label: str | None = None
    """``kind: rest`` for a member of a union told apart by a field, else None."""
    under: set[_Under] = field(default_factory=set)


@dataclass
class _Reached:
    path: str
    model: type[BaseModel]
    label: str | None = None


def _kinds(annotation: object) -> RegisteredKinds | None:
    """The registered destination kinds, if this is the type of a destination's config."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return None
    found = [m for m in typing.get_args(annotation)[1:] if isinstance(m, RegisteredKinds)]
    return found[0] if found else None


def _members(kinds: RegisteredKinds, plugins: bool) -> dict[str, type[DestinationConfig]]:
    """The kinds' config models by name; without those of plugins unless ``plugins``."""
    return {n: m for n, m in kinds.members().items() if plugins or n not in PLUGINS}


def _reached(
    annotation: object, path: str, unions: dict[str, list[str]], plugins: bool
) -> list[_Reached]:
    """The models a field of this type holds, each with its path in the file."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    kinds = _kinds(annotation)
    if kinds is not None:
        members = {
            f"{DISCRIMINATOR}: {name}": model for name, model in _members(kinds, plugins).items()
        }
        unions[path] = list(members)
        return [_Reached(path, model, label) for label, model in members.items()]
    if origin is typing.Annotated:
        return _reached(args[0], path, unions, plugins)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [_Reached(path, annotation)]
    if origin in (typing.Union, types.UnionType):
        return [r for arg in args for r in _reached(arg, path, unions, plugins)]
    if origin in (list, set, frozenset) and args:
        return _reached(args[0], f"{path}[]", unions, plugins)
    if origin is dict and len(args) == 2:
        return _reached(args[1], f"{path}.NAME", unions, plugins)
    return []


def sections(root: type[BaseModel] = CourierConfig, *, plugins: bool = True) -> list[Section]:
    """Every model reachable from ``root``, parents before children, each once.

    Without the kinds from plugins (and what only they hold) unless ``plugins``.
    """
    found: dict[type[BaseModel], Section] = {root: Section(root, [""], under={None})}
    unions: dict[str, list[str]] = {}

    def add(reached: _Reached, under: _Under) -> bool:
        """Record ``reached``; False when nothing new was learnt (no need to walk it again)."""
        section = found.setdefault(reached.model, Section(reached.model, [], reached.label))
        if reached.path in section.paths and under in section.under:
            return False
        if reached.path not in section.paths:
            section.paths.append(reached.path)
        section.under.add(under)
        return True

    def walk(model: type[BaseModel], path: str, under: _Under) -> None:
        for name, info in model.model_fields.items():
            here = f"{path}.{name}" if path else name
            held = _reached(info.annotation, here, unions, plugins)
            new = [r for r in held if add(r, under)]
            # A union's members get their sections side by side, before any of their children.
            for reached in new:
                inner = (reached.path, reached.label) if reached.label else under
                walk(reached.model, reached.path, inner)

    walk(root, "", None)
    for section in found.values():
        section.under = _simplified(section.under, unions)
    return list(found.values())


def _simplified(under: set[_Under], unions: dict[str, list[str]]) -> set[_Under]:
    """``{None}`` when a section lies under every member of a union (or under none)."""
    if None in under:
        return {None}
    for union, labels in unions.items():
        members = {u[1] for u in under if u is not None and u[0] == union}
        if members and members >= set(labels):
            return {None}
    return under


def title(section: Section) -> str:
    """The section's heading, e.g. ``destinations[] with kind: rest``."""
    path = section.paths[0]
    if not path:
        return ROOT_TITLE
    if section.label is not None:
        return f"{path} with {section.label}"
    labels = sorted(u[1] for u in section.under if u is not None)
    return f"{path} ({', '.join(labels)})" if labels else path


def anchor(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's) gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _type_name(annotation: object, link: Callable[[type[BaseModel]], str], plugins: bool) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is timedelta:
        return "duration (500ms, 2s, 1m, 1h)"
    kinds = _kinds(annotation)
    if kinds is not None:
        return " \\| ".join(link(model) for model in _members(kinds, plugins).values())
    if origin is typing.Annotated:
        return _type_name(args[0], link, plugins)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return link(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a, link, plugins) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a, link, plugins) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", repr(annotation))


def _default(info: typing.Any) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()
        return "see section" if isinstance(value, BaseModel) else f"`{value!r}`"
    value = info.default
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, timedelta):
        return f"`{format_duration(value)}`"
    if isinstance(value, Enum):
        value = value.value
    return f"`{value}`"


def render(*, plugins: bool = True) -> str:
    """The whole reference as Markdown; without the kinds from plugins unless ``plugins``."""
    found = sections(plugins=plugins)
    from_plugin: dict[type[BaseModel], Plugin] = {
        model: PLUGINS[name]
        for name, model in RegisteredKinds().members().items()
        if plugins and name in PLUGINS
    }
    by_model = {section.model: section for section in found}
    headings = [title(section) for section in found]
    duplicates = sorted({h for h in headings if headings.count(h) > 1})
    if duplicates:
        raise ValueError(f"two config sections would be called {', '.join(duplicates)}")

    out = [
        "# Config reference",
        "",
        "Generated from the config models by `courier config reference`; do not edit by hand.",
        "`${NAME}` and `${NAME:-default}` in any string are filled from the environment.",
        "Destination kinds from plugins ([plugins.md](plugins.md)) are in the reference",
        "`courier config reference` prints where they are installed.",
        "",
    ]
    for section, heading in zip(found, headings, strict=True):
        out += [f"## {heading}", "", (section.model.__doc__ or "").strip().splitlines()[0], ""]
        plugin = from_plugin.get(section.model)
        if plugin is not None:
            origin = f"entry point `{plugin.entry_point}`"
            out += [f"From the plugin {plugin.distribution} ({origin}).", ""]
        if len(section.paths) > 1:
            out += [f"Also at {', '.join(f'`{p}`' for p in section.paths[1:])}.", ""]
        out += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, info in section.model.model_fields.items():
            description = (info.description or "").replace("|", "\\|").replace("\n", " ")
            here = f"{section.paths[0]}.{name}" if section.paths[0] else name
            # Linked as the path it has here; the section may be titled after another path.
            reached = {
                r.model: r.label or r.path for r in _reached(info.annotation, here, {}, plugins)
            }

            def link(model: type[BaseModel], text: dict[type[BaseModel], str] = reached) -> str:
                return f"[{text[model]}](#{anchor(title(by_model[model]))})"

            kind = _type_name(info.annotation, link, plugins)
            out.append(f"| `{name}` | {kind} | {_default(info)} | {description} |")
        out.append("")
    return "\n".join(out)
