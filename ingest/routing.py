"""Routing: a pure function from a record (its key, or the whole record for ``when`` rules) to
exactly one destination (or none)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from activities.mapping import Expression, MappingError, record_data
from courier.config.model import RouteRule, RoutesConfig
from workflows.types import KafkaRecord, OutgoingRecord

Action = Literal["export", "fail", "skip"]


@dataclass(frozen=True)
class RouteDecision:
    """Where a key goes, and why: ``rule`` says which rule (or fallback) decided."""

    action: Action
    destination: str | None
    rule: str

    @property
    def reason(self) -> str:
        """A sentence for logs and failed workflows."""
        if self.action == "export":
            return f"routed to {self.destination} by {self.rule}"
        return f"no route: {self.rule}"


def key_text(key: bytes | None) -> str | None:
    """The key as rules see it: UTF-8 text, undecodable bytes escaped."""
    return None if key is None else key.decode("utf-8", errors="backslashreplace")


class Router:
    """Applies ordered rules, then the default, then the unmatched policy."""

    def __init__(self, routes: RoutesConfig) -> None:
        self._routes = routes
        self._regexes = {i: re.compile(r.regex) for i, r in enumerate(routes.rules) if r.regex}
        self._whens = {
            i: Expression(r.when, f"routes.rules[{i}].when")
            for i, r in enumerate(routes.rules)
            if r.when is not None
        }

    @property
    def needs_record(self) -> bool:
        """Whether some rule (``when``) looks beyond the key: then route with :meth:`decide`."""
        return bool(self._whens)

    def route(self, key: bytes | RouteDecision | None) -> RouteDecision:
        """Decide the destination of a record with this key (``when`` rules do not match);
        given a decision :meth:`decide` made, return it."""
        if isinstance(key, RouteDecision):
            return key
        return self.decide(key, None)

    def decide(self, key: bytes | None, record: KafkaRecord | None) -> RouteDecision:
        """Decide the destination of a record; ``when`` rules need ``record``."""
        text = key_text(key)
        data: dict[str, object] | None = None
        for index, rule in enumerate(self._routes.rules):
            if rule.when is not None:
                if record is None:
                    continue
                if data is None:
                    data = record_data(OutgoingRecord(idempotency_key="", record=record))
                try:
                    matched = bool(self._whens[index].evaluate(data))
                except MappingError as err:
                    where = f"{record.topic}/{record.partition}/{record.offset}"
                    return RouteDecision("fail", None, f"{where}: rule {index + 1}: {err.reason}")
                if matched:
                    return RouteDecision("export", rule.destination, _describe(index, rule))
            elif text is not None and self._matches(index, rule, text):
                return RouteDecision("export", rule.destination, _describe(index, rule))
        if self._routes.default is not None:
            return RouteDecision("export", self._routes.default, "the default route")
        what = "a null key" if text is None else f"key {text!r}"
        return RouteDecision(
            self._routes.unmatched,
            None,
            f"{what} matches no rule and there is no default (unmatched: {self._routes.unmatched})",
        )

    def _matches(self, index: int, rule: RouteRule, text: str) -> bool:
        if rule.exact is not None:
            return text == rule.exact
        if rule.prefix is not None:
            return text.startswith(rule.prefix)
        return self._regexes[index].fullmatch(text) is not None


def _describe(index: int, rule: RouteRule) -> str:
    if rule.exact is not None:
        return f"rule {index + 1} (exact {rule.exact!r})"
    if rule.prefix is not None:
        return f"rule {index + 1} (prefix {rule.prefix!r})"
    if rule.when is not None:
        return f"rule {index + 1} (when {' '.join(rule.when.split())!r})"
    return f"rule {index + 1} (regex {rule.regex!r})"
