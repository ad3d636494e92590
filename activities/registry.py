"""Every destination kind: the built-in ones (one ``register`` line each, below) and plugins.

A kind's module defines its config model (a :class:`DestinationConfig` with
``kind: Literal["name"]`` and a ``create()`` that builds the destination) and its destination
class. Registering the config model is all the rest of Courier needs: the config file, the
config reference, ``courier map``, ``courier deploy k8s`` and the workers ask the model (see the
hooks of :class:`DestinationConfig`), never the kind's name.

Other packages add kinds through the ``courier.destinations`` entry points (docs/plugins.md):
``name = "module:ConfigModel"``, the name being the kind's. They are loaded once, when this
module is imported, after the built-in kinds. A plugin that cannot be loaded (it fails to
import, is not a valid config model, or claims a kind another kind has) is left out with one
error line in the log; a config naming its kind is refused with the reason, and any other
config works as before (see docs/plugins.md for why).
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any, cast, get_args

from pydantic import Discriminator, GetCoreSchemaHandler
from pydantic_core import CoreSchema, PydanticCustomError, PydanticKnownError, core_schema

from activities import files, kafka, postgres, rest
from activities.base import Destination, DestinationConfig

DISCRIMINATOR = "kind"
"""The field of a destination's config that names its kind."""

KINDS: dict[str, type[DestinationConfig]] = {}
"""Config models of the registered kinds, by the value of their ``kind`` field, in order."""

_listeners: list[Callable[[], object]] = []

ENTRY_POINT_GROUP = "courier.destinations"
"""Entry-point group of plugin kinds: ``kind-name = "module:ConfigModel"``."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plugin:
    """Where a plugin kind comes from."""

    kind: str
    entry_point: str
    """As declared: ``name = module:attr``."""
    distribution: str
    """The package that declares it, with its version, e.g. ``courier-s3 1.2.0``."""


PLUGINS: dict[str, Plugin] = {}
"""Kinds loaded from plugins, by name."""

NOT_LOADED: dict[str, str] = {}
"""Kinds plugins declare that are not loaded, by name: why not, and what to do (one line)."""


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
    when the registered kinds change. A ``kind`` that is not registered is refused before the
    union sees it, naming the known kinds and where the plugin ones come from, or why a
    plugin's kind is not loaded.
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
            schema = handler.generate_schema(models[0])
        else:
            union: Any = functools.reduce(operator.or_, models)
            schema = handler.generate_schema(Annotated[union, Discriminator(DISCRIMINATOR)])
        return core_schema.no_info_before_validator_function(_check_kind, schema)


def _check_kind(data: Any) -> Any:
    """``data`` if its ``kind`` is registered (or absent: the union says so); else the reason."""
    kind = data.get(DISCRIMINATOR) if isinstance(data, dict) else None
    if not isinstance(kind, str) or (kind in KINDS and kind not in NOT_LOADED):
        return data
    if kind in NOT_LOADED:
        # Keeps the config's own words: the built-in kind a plugin contests is refused too.
        raise PydanticCustomError("destination_kind_not_loaded", NOT_LOADED[kind])
    raise PydanticKnownError(
        "union_tag_invalid",
        {"discriminator": repr(DISCRIMINATOR), "tag": kind, "expected_tags": known_kinds()},
    )


def known_kinds() -> str:
    """The registered kinds for a message: ``'rest', 'file', 'postgres', 's3' (plugin courier-s3
    1.2.0)``, then the plugin kinds that are not loaded, if any."""
    names = [
        f"{name!r} (plugin {PLUGINS[name].distribution})" if name in PLUGINS else repr(name)
        for name in KINDS
        if name not in NOT_LOADED
    ]
    text = ", ".join(names)
    if NOT_LOADED:
        text += f"; plugin kinds not loaded (see the log): {', '.join(map(repr, NOT_LOADED))}"
    return text


AnyDestinationConfig = Annotated[DestinationConfig, RegisteredKinds()]
"""Config of any registered kind, told apart by its ``kind`` field (use in pydantic models)."""


def create_destination(config: DestinationConfig) -> Destination:
    """Build the destination a validated config describes (not yet opened)."""
    return config.create()


register(rest.RestConfig)
register(files.FileConfig)
register(postgres.PostgresConfig)
register(kafka.KafkaDestinationConfig)

BUILT_IN = frozenset(KINDS)
"""The kinds that ship with Courier (registered above, before any plugin)."""


def load_plugins(entries: Iterable[EntryPoint] | None = None) -> None:
    """Register the kinds of the ``courier.destinations`` entry points (or of ``entries``).

    Each that cannot be loaded is left out, in :data:`NOT_LOADED`, with one error line logged.
    Two plugins claiming one kind, or a plugin claiming a built-in kind, both are: a config
    naming that kind is refused rather than run by code its author may not have meant.
    """
    if entries is None:
        entries = entry_points(group=ENTRY_POINT_GROUP)
    found: dict[str, list[tuple[Plugin, type[DestinationConfig]]]] = {}
    for entry in sorted(entries, key=lambda e: (e.name, e.value)):
        plugin = Plugin(entry.name, f"{entry.name} = {entry.value}", _distribution(entry))
        config = _load(entry, plugin)
        if config is not None:
            found.setdefault(plugin.kind, []).append((plugin, config))
    for kind, claims in found.items():
        if kind in KINDS or len(claims) > 1:
            if kind in BUILT_IN:
                owner = "built in"
            elif kind in KINDS:
                owner = "registered already"
            else:
                owner = "claimed by more than one plugin"
            where = " and ".join(_origin(plugin) for plugin, _ in claims)
            _not_loaded(
                kind,
                f"destination kind {kind!r} is {owner}, and declared by {where}; uninstall the "
                "plugin you do not use, or have it give its kind another name",
            )
            continue
        [(plugin, config)] = claims
        register(config)
        PLUGINS[kind] = plugin


def _load(entry: EntryPoint, plugin: Plugin) -> type[DestinationConfig] | None:
    """The entry point's config model; None (and the reason in NOT_LOADED) if it is not one."""
    try:
        loaded = entry.load()
    except Exception as err:  # anything a third-party module raises on import
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        _not_loaded(
            plugin.kind,
            f"destination plugin {_origin(plugin)} failed to load ({reason}); install its "
            "dependencies, or uninstall it",
        )
        return None
    problem = _model_problem(loaded, plugin.kind)
    if problem is not None:
        _not_loaded(
            plugin.kind,
            f"destination plugin {_origin(plugin)} is not a valid destination kind: {problem}; "
            "fix the plugin (docs/plugins.md) or uninstall it",
        )
        return None
    return cast("type[DestinationConfig]", loaded)


def _model_problem(loaded: object, name: str) -> str | None:
    """What keeps ``loaded`` from being the config model of kind ``name``; None if nothing."""
    if not (isinstance(loaded, type) and issubclass(loaded, DestinationConfig)):
        return f"{loaded!r} is not a subclass of activities.base.DestinationConfig"
    try:
        kind = kind_name(loaded)
    except TypeError as err:
        return str(err)
    if kind != name:
        return f"its kind is {kind!r} but the entry point is named {name!r}; name them alike"
    if loaded.create is DestinationConfig.create:
        return f"{loaded.__name__} does not define create()"
    return None


def _distribution(entry: EntryPoint) -> str:
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _origin(plugin: Plugin) -> str:
    return f"'{plugin.entry_point}' (entry point of {plugin.distribution})"


def _not_loaded(kind: str, problem: str) -> None:
    NOT_LOADED[kind] = problem
    log.error("%s", problem)


load_plugins()
