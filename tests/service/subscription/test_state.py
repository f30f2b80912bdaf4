"""The pieces the subscription flow's parts share: the bounded recent set."""

from __future__ import annotations

from service.subscription.state import Recent


def test_recent_claims_once_and_forgets_the_oldest() -> None:
    recent = Recent(3)
    assert recent.claim("a") and not recent.claim("a")
    for key in "bcd":
        assert recent.claim(key)
    assert "a" not in recent and "d" in recent
    assert recent.claim("a")  # forgotten, so new again
    recent.forget("a")
    assert recent.claim("a")
