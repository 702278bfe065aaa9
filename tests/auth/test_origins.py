"""A publishable key's origins: what an operator may name, and how a request's Origin is read."""

from __future__ import annotations

import pytest

from backinstock.auth.service import (
    InvalidOrigin,
    normalize_origin,
    normalize_origins,
    request_origin,
)


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://shop.example", "https://shop.example"),
        ("https://Shop.EXAMPLE/", "https://shop.example"),
        ("HTTPS://shop.example:443", "https://shop.example"),
        ("https://shop.example:8443", "https://shop.example:8443"),
        ("http://127.0.0.1:5173", "http://127.0.0.1:5173"),
        ("http://localhost", "http://localhost"),
        ("http://localhost:80", "http://localhost"),
        ("https://店.example", "https://xn--hxt.example"),
        ("  https://shop.example  ", "https://shop.example"),
    ],
)
def test_origins_are_normalised_as_browsers_send_them(given: str, origin: str) -> None:
    assert normalize_origin(given) == origin


@pytest.mark.parametrize(
    "given",
    [
        "shop.example",  # no scheme
        "http://shop.example",  # http from a public host
        "ftp://shop.example",
        "https://shop.example/p/1",  # a path
        "https://shop.example?x=1",
        "https://shop.example#top",
        "https://user:pw@shop.example",
        "https://shop.example:99999",
        "https://shop.example:port",
        "https://",
        "https://[::1]",
        "https://shop..example",
        "https://shop_example.com",
        "null",
        "",
    ],
)
def test_what_is_not_an_origin_is_refused(given: str) -> None:
    with pytest.raises(InvalidOrigin):
        normalize_origin(given)
    assert request_origin(given) is None


def test_a_key_names_at_least_one_and_at_most_twenty_origins_once_each() -> None:
    assert normalize_origins(["https://a.example", "https://A.example/"]) == ["https://a.example"]
    with pytest.raises(InvalidOrigin):
        normalize_origins([])
    with pytest.raises(InvalidOrigin):
        normalize_origins([f"https://s{i}.example" for i in range(21)])
    assert request_origin(None) is None
