"""One money helper, and the text clients saw before it: an order's amounts exactly as sent,
figures rounded half-up to cents."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given
from hypothesis import strategies as st

from backinstock.money import money


def _order_money_before(amount: Decimal) -> str:  # conversions/orders.py's money()
    cents = amount.quantize(Decimal("0.01"))
    return f"{cents:.2f}" if cents == amount else f"{amount.normalize():f}"


def _figure_money_before(amount: Decimal | None) -> str:  # stats/filters.py's money()
    return format((amount or Decimal(0)).quantize(Decimal("0.01"), ROUND_HALF_UP), "f")


# What DecimalString accepts (its pattern), and what sums of Money columns hold (4 places).
amounts = st.from_regex(r"\A[0-9]{1,16}(\.[0-9]{1,16})?\Z").map(Decimal) | st.decimals(
    min_value=0, max_value=10**12, places=4, allow_nan=False, allow_infinity=False
)


def test_examples() -> None:
    assert money(Decimal("297"), exact=True) == "297.00"
    assert money(Decimal("0.125"), exact=True) == "0.125"
    assert money(Decimal("1.1000"), exact=True) == "1.10"
    assert money(Decimal("0.125")) == "0.13"
    assert money(Decimal("297.5")) == "297.50"
    assert money(None) == "0.00"


@given(amounts)
def test_an_orders_amounts_read_as_before(amount: Decimal) -> None:
    assert money(amount, exact=True) == _order_money_before(amount)


@given(st.none() | amounts)
def test_figures_read_as_before(amount: Decimal | None) -> None:
    assert money(amount) == _figure_money_before(amount)
