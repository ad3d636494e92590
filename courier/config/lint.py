"""What a valid config may still get wrong: warnings for ``courier config check``.

A config that validates can still lose every record (no route at all), leave a destination
without records (no route leads to it) or leak a credential (a password written in the file,
which ``courier deploy k8s`` copies into a ConfigMap). :func:`lint` says so, one line each.

:func:`written_secrets` finds credentials in the file as written (``${NAME}`` placeholders
intact), by what the config models say rather than by kind: fields typed ``SecretStr``, the
fields a destination kind names (:meth:`DestinationConfig.credential_fields`), and a password in
any URL or DSN (``scheme://user:password@host``, ``password=...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from activities.base import DestinationConfig
from courier.config.model import (
    _ENV_REFERENCE,
    CourierConfig,
    TreePath,
    located,
    read_yaml,
    typed_nodes,
)

_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@:\s]*:([^/@\s]*)@", re.IGNORECASE)
_DSN_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('[^']*'|[^\s']+)", re.IGNORECASE)
_DSN_KEYWORDS = re.compile(r"(?:^|\s)(?:host|hostaddr|dbname|user)\s*=", re.IGNORECASE)
_UNSET = "\0"  # stands for a placeholder without a default while looking for passwords


@dataclass(frozen=True)
class WrittenSecret:
    """A credential the config file holds in its text."""

    where: TreePath
    """The field, e.g. ``("destinations", 1, "dsn")``."""
    password: bool
    """A password inside the field's value (a URL or DSN), rather than the whole value."""
    default_of: str | None = None
    """The placeholder whose ``:-default`` holds it; None when written as the value."""

    @property
    def field(self) -> str:
        """The field as messages write it, e.g. ``destinations[1].dsn``."""
        return located(self.where, None)


def written_secrets(tree: Any) -> list[WrittenSecret]:
    """Credentials written in a parsed config file (as written), or in a placeholder's default."""
    found: list[WrittenSecret] = []
    credentials: set[TreePath] = set()
    for where, node, kind in typed_nodes(tree):
        if kind is SecretStr:
            credentials.add(where)
        elif isinstance(kind, type) and issubclass(kind, DestinationConfig):
            credentials.update((*where, *inner) for inner in kind.credential_fields(node))
    for where, value in _strings(tree, ()):
        if where in credentials:
            found += _whole_value(where, value)
        else:
            found += _passwords(where, value)
    return found


def _strings(node: Any, where: TreePath) -> list[tuple[TreePath, str]]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(value, (*where, key))]
    if isinstance(node, list):
        return [s for index, value in enumerate(node) for s in _strings(value, (*where, index))]
    return [(where, node)] if isinstance(node, str) else []


def _whole_value(where: TreePath, value: str) -> list[WrittenSecret]:
    """A credential field: written if it has no placeholder, else each non-empty default."""
    references = list(_ENV_REFERENCE.finditer(value))
    if not references:
        return [WrittenSecret(where, password=False)] if value.strip() else []
    return [
        WrittenSecret(where, password=False, default_of=m.group(1))
        for m in references
        if m.group(2)
    ]


def _passwords(where: TreePath, value: str) -> list[WrittenSecret]:
    """Passwords of the URLs and DSNs in ``value``, written or in a placeholder's default."""
    # The value as the file gives it without an environment: defaults filled in, each character
    # knowing where it came from (None: written, else the placeholder whose default it is).
    text: list[str] = []
    origin: list[str | None] = []
    last = 0
    for match in _ENV_REFERENCE.finditer(value):
        written = value[last : match.start()]
        text.append(written)
        origin += [None] * len(written)
        default = match.group(2)
        filled = _UNSET if default is None else default
        text.append(filled)
        origin += [match.group(1)] * len(filled)
        last = match.end()
    text.append(value[last:])
    origin += [None] * (len(value) - last)
    joined = "".join(text)
    spans = [m.span(1) for m in _URL_PASSWORD.finditer(joined)]
    if _DSN_KEYWORDS.search(joined):
        spans += [m.span(1) for m in _DSN_PASSWORD.finditer(joined)]
    found = []
    for start, end in spans:
        password = joined[start:end]
        # A {piece} of a template takes the password from the record, not from the file.
        if not password or "{" in password or set(password) == {_UNSET}:
            continue
        sources = [origin[i] for i in range(start, end) if joined[i] != _UNSET]
        if None in sources:
            found.append(WrittenSecret(where, password=True))
        else:
            found.append(WrittenSecret(where, password=True, default_of=sources[0]))
    return found


def _env_name(config: CourierConfig, where: TreePath) -> str:
    """A name for the environment variable that should hold the value at ``where``."""
    parts: list[str] = [str(p) for p in where if not isinstance(p, int)]
    index = where[1] if len(where) > 2 and where[0] == "destinations" else None
    if isinstance(index, int) and index < len(config.destinations):
        parts = [config.destinations[index].name, parts[-1]]
    elif len(parts) > 2:
        parts = [parts[0], parts[-1]]
    return re.sub(r"[^A-Za-z0-9]+", "_", "_".join(parts)).strip("_").upper()


def lint(config: CourierConfig, tree: Any, source: yaml.Node | None = None) -> list[str]:
    """One warning line for each thing a valid config gets wrong (``tree``: the file as written).

    ``source``: the YAML node tree of ``tree``, to give each warning the line of its field.
    """
    return _routing(config) + _secrets(config, tree, source)


def lint_file(path: Path, config: CourierConfig) -> list[str]:
    """:func:`lint` for the config file at ``path``, already loaded as ``config``."""
    tree, source = read_yaml(path.read_text())
    return lint(config, tree, source)


def _routing(config: CourierConfig) -> list[str]:
    routes = config.routes
    names = [d.name for d in config.destinations]
    if not routes.rules and routes.default is None:
        fate = "fails" if routes.unmatched == "fail" else "is skipped"
        fix = (
            f"add `default: {names[0]}` under routes to send every record to {names[0]}"
            if len(names) == 1
            else f"add rules, or `default: NAME` under routes (one of {', '.join(names)})"
        )
        return [
            f"routes: no rules and no default, so every record {fate} (routes.unmatched: "
            f"{routes.unmatched}); {fix}"
        ]
    reached = {routes.default, *(rule.destination for rule in routes.rules)}
    return [
        f"destinations[{index}] ({name}): no route leads to it (neither routes.default nor a "
        "rule names it), so it receives no records"
        for index, name in enumerate(names)
        if name not in reached
    ]


def _secrets(config: CourierConfig, tree: Any, source: yaml.Node | None) -> list[str]:
    warnings = []
    for secret in written_secrets(tree):
        if secret.default_of is not None:
            continue  # a default is for local runs; `courier deploy k8s` refuses it
        password = secret.password or "password" in str(secret.where[-1]).lower()
        what = "a password" if password else "a credential"
        name = _env_name(config, secret.where)
        warnings.append(
            f"{located(secret.where, source)} holds {what} written in the config file, which "
            f"anyone who can read the file sees; write ${{{name}}} there and set {name} in the "
            f"environment (on Kubernetes, in the Secret {config.kubernetes.secret_name})"
        )
    return warnings
