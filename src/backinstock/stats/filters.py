"""What every figure is narrowed by: a SKU, a channel, a segment and a period
``[since, until)``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, func, literal_column, select

from backinstock.subscriptions.models import Subscription


@dataclass(frozen=True)
class Filters:
    until: datetime
    since: datetime | None = None
    sku: str | None = None
    channel: str | None = None
    segment: str | None = None

    def period(self, moment: SQLColumnExpression[Any]) -> list[ColumnElement[bool]]:
        """``since <= moment < until``; a NULL moment is never in a period."""
        clauses = [moment < self.until]
        if self.since is not None:
            clauses.append(moment >= self.since)
        return clauses

    def narrow(
        self,
        sku: SQLColumnExpression[Any],
        channel: SQLColumnExpression[Any],
        subscription_id: SQLColumnExpression[Any],
    ) -> list[ColumnElement[bool]]:
        """``subscription_id``: the row's subscription, whose segment the segment filter
        reads (a semi-join on the indexed column, so no figure table repeats the segment)."""
        clauses: list[ColumnElement[bool]] = []
        if self.sku is not None:
            clauses.append(sku == self.sku)
        if self.channel is not None:
            clauses.append(channel == self.channel)
        if self.segment is not None:
            segment = select(Subscription.id).where(Subscription.segment == self.segment)
            clauses.append(subscription_id.in_(segment))
        return clauses


def segment_key() -> ColumnElement[str]:
    """A subscription's segment for grouping: none groups as '' (a segment is never empty),
    which sorts first on both databases, unlike NULL. A literal, not a bound parameter:
    PostgreSQL must see the GROUP BY expression and the selected one as the same."""
    return func.coalesce(Subscription.segment, literal_column("''"))
