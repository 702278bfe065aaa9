"""Amounts as the API writes them: decimal strings (never JSON numbers), at least two places.

One helper for every amount a client reads. An order's answer repeats its amounts exactly
(``"297.00"``, ``"0.125"``); figures summed over stored amounts are rounded half-up to cents
(``"297.13"``). Stored amounts are exact (:class:`backinstock.db.Money`); only the text
differs.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENTS = Decimal("0.01")


def money(amount: Decimal | None, *, exact: bool = False) -> str:
    """``amount`` (None is zero) with two places, rounded half-up; with ``exact``, every
    place it has beyond two is kept instead."""
    value = amount or Decimal(0)
    if not exact:
        return format(value.quantize(CENTS, ROUND_HALF_UP), "f")
    cents = value.quantize(CENTS)
    return f"{cents:.2f}" if cents == value else f"{value.normalize():f}"
