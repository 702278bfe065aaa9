"""Work that spans domains, one story per module: a restock becomes messages
(``restock``), a sent message becomes a coupon follow-up (``followups``), an order becomes
conversions (``orders``). A flow writes no table itself: it calls each table's owner."""
