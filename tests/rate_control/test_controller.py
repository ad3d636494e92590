"""The rate controller: circuit breaking on unavailability, AIMD on 429s, the operator's ceiling."""

from __future__ import annotations

from courier.rate_control.controller import (
    ControlState,
    OutcomeReport,
    RateController,
    RateControlSettings,
    describe_decision,
)

SETTINGS = RateControlSettings(failure_threshold=5, probe_interval_s=5.0, adjust_interval_s=2.0)


def report(
    answered: int = 0, unavailable: int = 0, throttled: int = 0, limit: float | None = 10.0
) -> OutcomeReport:
    return OutcomeReport(
        worker="w1",
        window_s=1.0,
        answered=answered,
        unavailable=unavailable,
        throttled=throttled,
        last_error="POST http://x/ failed: connection refused" if unavailable else "",
        configured_limit=limit,
    )


def controller() -> RateController:
    return RateController(ControlState(), SETTINGS)


def test_unavailable_attempts_in_a_row_open_the_circuit_at_the_probe_rate() -> None:
    c = controller()
    c.observe(report(unavailable=4), now=100.0)
    assert c.state.mode == "normal"
    c.observe(report(unavailable=1), now=101.0)
    assert (c.state.mode, c.state.rate, c.state.since) == ("open", 0.2, 101.0)
    assert describe_decision(c.state) == (
        "circuit open since 00:01:41 UTC, probing every 5s; "
        "last error: POST http://x/ failed: connection refused"
    )


def test_an_answer_between_failures_resets_the_count() -> None:
    c = controller()
    for t in range(10):
        c.observe(report(unavailable=3), now=float(t))
        c.observe(report(answered=1), now=float(t) + 0.5)
    assert c.state.mode == "normal" and c.state.version == 0


def test_a_successful_probe_closes_the_circuit_back_to_no_override() -> None:
    c = controller()
    c.observe(report(unavailable=5), now=0.0)
    c.observe(report(unavailable=1), now=5.0)
    assert c.state.mode == "open"
    version = c.state.version
    c.observe(report(answered=1), now=10.0)
    assert (c.state.mode, c.state.rate) == ("normal", None)
    assert c.state.version == version + 1


def test_429s_halve_the_rate_at_most_once_per_interval_then_it_climbs_back() -> None:
    c = controller()
    c.observe(report(answered=5, throttled=3), now=0.0)
    assert (c.state.mode, c.state.rate) == ("adaptive", 5.0)
    c.observe(report(throttled=3), now=1.0)  # same storm, within the interval
    assert c.state.rate == 5.0
    c.observe(report(throttled=3), now=2.0)
    assert c.state.rate == 2.5
    rates = []
    t = 2.0
    while c.state.mode == "adaptive":
        t += 2.0
        c.observe(report(answered=5), now=t)
        rates.append(c.state.rate)
    # +half the rate (at least a tenth of the limit) every 2 s: 2.5 → 3.75 → 5.625 → 8.4375 → 10.
    assert rates[:3] == [3.75, 5.625, 8.4375]
    assert (c.state.mode, c.state.rate) == ("normal", None)
    assert t == 2.0 + 2.0 * 4


def test_the_operator_limit_is_the_ceiling_and_the_normal_override() -> None:
    c = controller()
    c.set_operator_limit(4.0, now=0.0)
    assert (c.state.mode, c.state.rate) == ("normal", 4.0)
    c.observe(report(answered=1, throttled=1), now=10.0)
    assert c.state.rate == 2.0
    for t in range(12, 40, 2):
        c.observe(report(answered=1), now=float(t))
    assert (c.state.mode, c.state.rate) == ("normal", 4.0)
    c.set_operator_limit(None, now=50.0)
    assert (c.state.mode, c.state.rate) == ("normal", None)


def test_an_unlimited_destination_starts_from_its_achieved_rate() -> None:
    c = controller()
    c.observe(report(answered=30, throttled=10, limit=None), now=0.0)
    assert c.state.rate == 20.0  # 40 attempts in 1 s, halved
    t = 0.0
    while c.state.mode == "adaptive":
        t += 2.0
        c.observe(report(answered=5, limit=None), now=t)
    assert (c.state.mode, c.state.rate) == ("normal", None)  # unlimited again at 2 × 40


def test_a_circuit_opened_while_adaptive_closes_to_the_lowered_rate() -> None:
    c = controller()
    c.observe(report(answered=1, throttled=1), now=0.0)
    assert c.state.rate == 5.0
    c.observe(report(unavailable=5), now=1.0)
    assert c.state.mode == "open"
    c.observe(report(answered=1), now=6.0)
    assert (c.state.mode, c.state.rate) == ("adaptive", 5.0)


def not_reached(n: int, limit: float | None = 10.0) -> OutcomeReport:
    return OutcomeReport(worker="w1", window_s=1.0, not_reached=n, configured_limit=limit)


def test_records_failing_before_the_destination_do_not_hold_up_the_probes() -> None:
    """An open circuit lets them through ever faster, up to the ceiling, without closing."""
    c = controller()
    c.observe(report(unavailable=5), now=0.0)
    rates = []
    for t in range(1, 7):
        c.observe(not_reached(3), now=float(t))
        rates.append(c.state.rate)
    assert c.state.mode == "open" and c.state.draining
    assert rates == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]  # doubling, up to the configured limit
    assert "passing records that fail before reaching it at 10/s" in describe_decision(c.state)
    # An attempt reaches the destination, still down: back to one probe per interval.
    c.observe(report(unavailable=1), now=8.0)
    assert (c.state.mode, c.state.rate, c.state.draining) == ("open", 0.2, False)
    # One answered: the circuit closes as ever.
    c.observe(report(answered=1), now=9.0)
    assert (c.state.mode, c.state.rate, c.state.draining) == ("normal", None, False)


def test_records_failing_before_the_destination_never_open_or_close_a_circuit() -> None:
    c = controller()
    c.observe(not_reached(50), now=0.0)
    assert c.state.mode == "normal" and c.state.version == 0
    c.observe(report(unavailable=5), now=1.0)
    c.observe(not_reached(5, limit=None), now=2.0)
    assert c.state.mode == "open" and c.state.rate == 1.0  # no limit: from 1/s, up to 50/s


def test_closing_the_circuit_says_how_long_it_was_open_and_how_many_probes_it_took() -> None:
    c = controller()
    c.observe(report(unavailable=5), now=100.0)
    c.observe(report(unavailable=1), now=105.0)
    c.observe(report(answered=1), now=112.0)
    assert c.state.mode == "normal"
    assert c.state.reason == "circuit closed after 12s, 2 probes"
