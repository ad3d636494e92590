"""What the integration tests check instead of measured rates: a bound that passes requests that
keep a limit, however late some arrive, and catches requests that do not keep it; whether two
keys' requests were ever in flight at once."""

from tests.integration.harness import beyond_limit
from tests.integration.keyorder import RandomReceiver, keys_at_once


def paced(count: int, rate: float, start: float = 0.0) -> list[float]:
    return [start + i / rate for i in range(count)]


def test_requests_paced_at_the_limit_are_within_it() -> None:
    assert beyond_limit(paced(60, 5.0), 5.0) is None


def test_the_servers_first_burst_is_within_the_limit() -> None:
    # Temporal's limiter: limit + 1 at once from a full bucket, then the limit.
    times = [0.0] * 6 + paced(30, 5.0, start=0.2)
    assert beyond_limit(times, 5.0) is None


def test_late_arrivals_bunching_up_are_within_the_limit() -> None:
    times = paced(40, 2.0)
    late = [t + 0.9 if i % 4 == 0 else t for i, t in enumerate(times)]
    assert beyond_limit(late, 2.0) is None


def test_a_loaded_machine_only_spreads_requests() -> None:
    times = paced(20, 5.0) + paced(20, 1.0, start=10.0)
    assert beyond_limit(times, 5.0) is None


def test_requests_at_the_workers_own_pace_exceed_an_override() -> None:
    found = beyond_limit(paced(16, 50.0), 2.0)
    assert found is not None and found.startswith("16 requests in 0.30s")


def test_a_fifth_over_the_limit_shows_over_a_run() -> None:
    assert beyond_limit(paced(60, 6.0), 5.0) is not None


def test_requests_of_two_keys_at_once_are_found() -> None:
    receiver = RandomReceiver(max_delay=0, unavailable=0)
    receiver.spans["/o/a"] = [(0.0, 0.3), (1.0, 1.1)]
    receiver.spans["/o/b"] = [(0.2, 0.4), (2.0, 2.1)]
    assert keys_at_once(receiver, "/o/") == 1
    receiver.spans["/o/b"] = [(0.5, 0.6), (2.0, 2.1)]
    assert keys_at_once(receiver, "/o/") == 0
