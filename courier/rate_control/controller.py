"""Rate control of one destination: a circuit breaker and an adaptive (AIMD) rate.

Pure and deterministic, so the ``DestinationState`` workflow runs it on the outcome reports of
every worker of the destination: the decision is one for the whole cluster, and the workers
apply it as the task queue's server-side rate limit (which holds across all of them).

- **Circuit**: ``failure_threshold`` attempts in a row that found the destination
  unavailable (refused, timed out, 5xx) with no success in between open it: the queue's rate
  drops to one attempt per ``probe_interval_s``, so records wait in Temporal instead of
  spending attempts. The first success closes it again.
- **Adaptive rate**: a report with 429 answers lowers the rate multiplicatively (×``decrease``,
  at most once per ``adjust_interval_s``); reports with successes and no 429 raise it every
  ``adjust_interval_s`` by half its value (``growth``), at least by ``increase_fraction`` of
  the ceiling, until it reaches the ceiling again (the operator's ``courier limit``, else the
  configured ``rate_limit``). Growing by a share of the rate brings a destination that was cut
  far down back within seconds once the 429s stop, while a steady 429 keeps halving it. A
  destination without a limit starts from the rate it was achieving and goes back to unlimited
  once it runs at twice that without a 429.

Rates are in the queue's unit: activities per second (one record each in per-record mode).

:class:`OutcomeReport` (a worker's window, in) and :class:`ControlState` (the decision and what
it rests on, out and across continue-as-new) cross the Temporal boundary as JSON and are in
recorded histories: a new field needs a default. This module does no I/O and reads no clock
(``now`` is passed in: ``workflow.now()`` in the workflow); it is imported into the workflow
sandbox as a pass-through module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from courier.core.rates import format_rate

MAX_DRAIN_RATE = 50.0
"""Activities/s at most while an open circuit passes records that fail before reaching the
destination, when the destination has no limit of its own."""


@dataclass(frozen=True)
class OutcomeReport:
    """What one worker's export attempts of one destination met over its last window."""

    worker: str
    window_s: float
    answered: int = 0
    """Attempts the destination answered: written, or refused for good."""
    unavailable: int = 0
    """Attempts that found the destination unreachable, timing out or answering 5xx."""
    throttled: int = 0
    """Attempts answered 429."""
    not_reached: int = 0
    """Attempts that failed before reaching the destination (record gone, mapping failed)."""
    last_error: str = ""
    configured_limit: float | None = None
    """The worker's configured queue rate (activities/s); None is unlimited."""
    circuit_breaker: bool = True
    failure_threshold: int = 5
    probe_interval_s: float = 5.0
    adaptive: bool = True


@dataclass
class ControlState:
    """A destination's rate decision and what it rests on (kept by :class:`RateController`)."""

    mode: str = "normal"
    """``normal`` (configured or operator limit), ``adaptive`` (lowered after 429s) or
    ``open`` (circuit open: probing)."""
    rate: float | None = None
    """The queue's rate override the workers apply (activities/s); None: no override."""
    since: float = 0.0
    """Unix time the current mode began."""
    reason: str = ""
    version: int = 0
    """Raised on every change, so workers apply each decision once."""
    configured_limit: float | None = None
    operator_limit: float | None = None
    consecutive_unavailable: int = 0
    last_error: str = ""
    last_adjusted: float | None = None
    rate_before_open: float | None = None
    unlimited_start: float | None = None
    probes: int = 0
    """Attempts that reached the destination since the circuit opened."""
    draining: bool = False
    """Circuit open, and attempts fail before reaching the destination: the queue goes faster
    than the probe rate until one reaches it again."""


@dataclass(frozen=True)
class RateControlSettings:
    """The knobs of :class:`RateController` (defaults suit most HTTP APIs)."""

    failure_threshold: int = 5
    probe_interval_s: float = 5.0
    decrease: float = 0.5
    increase_fraction: float = 0.1
    growth: float = 0.5
    adjust_interval_s: float = 2.0
    min_rate: float = 0.1


def ceiling(state: ControlState) -> float | None:
    """The most a destination's rate may be: the operator's limit, else the configured one."""
    return state.operator_limit if state.operator_limit is not None else state.configured_limit


class RateController:
    """Turns outcome reports into the destination's rate decision (kept in a ControlState)."""

    def __init__(self, state: ControlState, settings: RateControlSettings | None = None) -> None:
        self.state = state
        self.settings = settings or RateControlSettings()

    def ceiling(self) -> float | None:
        """The most the rate may be: the operator's limit, else the configured one."""
        return ceiling(self.state)

    def set_operator_limit(self, rate: float | None, now: float) -> None:
        """``courier limit``: the new ceiling (None: back to the configured limit)."""
        self.state.operator_limit = rate
        if self.state.mode == "normal":
            self._change("normal", self.ceiling_override(), now, "")
        elif self.state.rate is not None and (c := self.ceiling()) is not None:
            self.state.rate = min(self.state.rate, c)

    def ceiling_override(self) -> float | None:
        """The queue override in normal mode: the operator's limit, or none."""
        return self.state.operator_limit

    def observe(self, report: OutcomeReport, now: float) -> None:
        """Update the decision with one worker's outcomes over its last window."""
        s = self.state
        cfg = replace(
            self.settings,
            failure_threshold=report.failure_threshold,
            probe_interval_s=report.probe_interval_s,
        )
        s.configured_limit = report.configured_limit
        if report.last_error:
            s.last_error = report.last_error
        if report.answered:
            s.consecutive_unavailable = 0
        elif report.unavailable:
            s.consecutive_unavailable += report.unavailable
        if s.mode == "open":
            s.probes += report.answered + report.unavailable + report.throttled
            if report.answered:
                self._close(now)
            elif report.unavailable or report.throttled:
                self._probe(cfg, now)
            elif report.not_reached:
                self._drain(now)
            return
        if report.circuit_breaker and s.consecutive_unavailable >= cfg.failure_threshold:
            s.rate_before_open = s.rate if s.mode == "adaptive" else None
            s.probes = 0
            self._change(
                "open",
                1.0 / cfg.probe_interval_s,
                now,
                f"circuit open: {s.consecutive_unavailable} attempts in a row failed",
            )
            return
        adjustable = s.last_adjusted is None or now - s.last_adjusted >= cfg.adjust_interval_s
        if report.adaptive and report.throttled and adjustable:
            achieved = (report.answered + report.throttled) / max(report.window_s, 0.001)
            current = s.rate if s.mode == "adaptive" else self.ceiling()
            if current is None:
                current = max(achieved, cfg.min_rate)
                s.unlimited_start = current
            lowered = max(cfg.min_rate, current * cfg.decrease)
            self._change("adaptive", lowered, now, "lowered after 429 answers")
            s.last_adjusted = now
            return
        if (
            s.mode == "adaptive"
            and report.answered
            and not report.throttled
            and adjustable
            and s.rate is not None
        ):
            limit = self.ceiling()
            top = limit if limit is not None else 2 * (s.unlimited_start or s.rate)
            raised = s.rate + max(top * cfg.increase_fraction, s.rate * cfg.growth)
            s.last_adjusted = now
            if raised >= top:
                self._change("normal", self.ceiling_override(), now, "")
            else:
                s.rate = raised
                s.version += 1

    def _drain(self, now: float) -> None:
        """Let the records that fail before reaching the destination through faster.

        They spend the queue's rate, a probe each, without telling anything about the
        destination; so the rate doubles every report of such attempts alone (up to the ceiling,
        or ``MAX_DRAIN_RATE``) and drops back to the probe rate at the next attempt that reaches
        the destination and finds it still down.
        """
        s = self.state
        top = self.ceiling() or MAX_DRAIN_RATE
        rate = min(top, max(2 * (s.rate or 0.0), 1.0))
        if rate != s.rate or not s.draining:
            s.rate = rate
            s.draining = True
            s.version += 1

    def _probe(self, cfg: RateControlSettings, now: float) -> None:
        """Back to the probe rate after draining (an attempt reached the still-down destination)."""
        s = self.state
        if s.draining:
            s.rate = 1.0 / cfg.probe_interval_s
            s.draining = False
            s.version += 1

    def _close(self, now: float) -> None:
        s = self.state
        closed = f"circuit closed after {now - s.since:.0f}s, {s.probes} probes"
        if s.rate_before_open is not None:
            self._change("adaptive", s.rate_before_open, now, f"{closed}; rate still lowered")
        else:
            self._change("normal", self.ceiling_override(), now, closed)
        s.rate_before_open = None

    def _change(self, mode: str, rate: float | None, now: float, reason: str) -> None:
        s = self.state
        s.draining = False
        if s.mode != mode:
            s.since = now
        s.mode = mode
        s.rate = rate
        s.reason = reason
        s.version += 1


def describe_decision(state: ControlState) -> str:
    """One line for a decision, e.g. ``circuit open since 12:03:04 UTC, probing every 5s; …``."""
    since = time.strftime("%H:%M:%S UTC", time.gmtime(state.since))
    if state.mode == "open":
        error = state.last_error or state.reason
        if state.draining:
            return (
                f"circuit open since {since}, passing records that fail before reaching it at "
                f"{format_rate(state.rate)}; last error: {error}"
            )
        probe = f"{1 / state.rate:.0f}s" if state.rate else "?"
        return f"circuit open since {since}, probing every {probe}; last error: {error}"
    if state.mode == "adaptive":
        top = format_rate(ceiling(state))  # "unlimited" when there is none
        rate = format_rate(state.rate)
        return f"adaptive rate {rate} (limit {top}) since {since}: {state.reason}"
    if state.operator_limit is not None:
        return f"operator limit {format_rate(state.operator_limit)}"
    return "normal"
