from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backinstock.db import Base, UTCDateTime, utcnow


class ApiKey(Base):
    """An API key, stored as the SHA-256 of its secret (the secret is shown once).

    A secret key (``bis_…``) carries scopes; a publishable key (``pk_…``, safe in a web
    page) carries none and the origins it may be used from."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(128))  # space-separated
    kind: Mapped[str] = mapped_column(String(16), default="secret", server_default="secret")
    # A publishable key's origins, normalised, space-separated; NULL for a secret key.
    origins: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
