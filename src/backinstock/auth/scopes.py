"""What a secret key may do (its scopes) and which kind a key is.

Apart from the service so that the command line can name the scopes in its options
without importing the database layer: every ``backinstock`` command, ``--help`` too, builds
its options when it starts."""

from __future__ import annotations

import enum


class Scope(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    INVENTORY = "inventory"
    STATS = "stats"
    ADMIN = "admin"


class KeyKind(enum.StrEnum):
    SECRET = "secret"  # noqa: S105 - a kind of key, not a secret
    PUBLISHABLE = "publishable"
