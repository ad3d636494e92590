from courier.config.model import RouteRule, RoutesConfig
from ingest.routing import Router

RULES = [
    RouteRule(exact="vip", destination="priority"),
    RouteRule(prefix="order-", destination="orders"),
    RouteRule(regex=r"inv-\d+", destination="invoices"),
    RouteRule(prefix="o", destination="other-o"),
]


def test_first_matching_rule_wins() -> None:
    router = Router(RoutesConfig(rules=RULES, default="fallback"))
    assert router.route(b"vip").destination == "priority"
    decision = router.route(b"order-17")
    assert (decision.action, decision.destination) == ("export", "orders")
    assert decision.rule == "rule 2 (prefix 'order-')"
    assert router.route(b"oak").destination == "other-o"


def test_regex_must_match_the_whole_key() -> None:
    router = Router(RoutesConfig(rules=RULES, default="fallback"))
    assert router.route(b"inv-42").destination == "invoices"
    assert router.route(b"inv-42x").destination == "fallback"


def test_default_takes_unmatched_and_null_keys() -> None:
    router = Router(RoutesConfig(rules=RULES, default="fallback"))
    for key in (b"zzz", None):
        decision = router.route(key)
        assert (decision.action, decision.destination, decision.rule) == (
            "export",
            "fallback",
            "the default route",
        )


def test_unmatched_fail_policy_gives_a_readable_reason() -> None:
    router = Router(RoutesConfig(rules=RULES, unmatched="fail"))
    decision = router.route(b"zzz")
    assert decision.action == "fail" and decision.destination is None
    assert "key 'zzz' matches no rule" in decision.reason
    assert "a null key" in router.route(None).reason


def test_unmatched_skip_policy() -> None:
    assert Router(RoutesConfig(rules=RULES, unmatched="skip")).route(b"zzz").action == "skip"


def test_undecodable_keys_are_matched_escaped() -> None:
    router = Router(RoutesConfig(rules=[RouteRule(prefix="order-", destination="orders")]))
    assert router.route(b"order-\xff").destination == "orders"
