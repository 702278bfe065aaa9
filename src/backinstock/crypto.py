"""Key rings, field encryption, blind indexes and signed tokens.

* Contacts (and other personal fields) are sealed with AES-256-GCM under the newest key of
  ``BACKINSTOCK_ENCRYPTION_KEYS``; the key id is stored beside the ciphertext, so older keys keep
  opening old rows until ``backinstock keys rotate-data`` re-seals them. Associated data binds a
  ciphertext to its row and use, so a ciphertext copied into another row does not open.
* Lookups and dedupe use a keyed HMAC-SHA256 "blind index" of the normalised value under a
  separate key: equal inputs give equal digests, and the digest reveals nothing without the key.
* Unsubscribe and tracked links carry compact HMAC-signed tokens naming one row id.
* Values that expire (the dashboard's session cookie) are signed with a timestamp by
  itsdangerous.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from itsdangerous import BadSignature, TimestampSigner

if TYPE_CHECKING:
    # Only load_keys' parameter: `keys generate-env` makes keys without reading settings.
    from backinstock.config import CryptoSettings

log = structlog.get_logger(__name__)

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NONCE_BYTES = 12


class KeyConfigError(ValueError):
    """A key ring setting is malformed or missing where it is required."""


@dataclass(frozen=True)
class KeyRing:
    """Named 32-byte keys, newest first."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, text: str, setting: str) -> KeyRing:
        entries = [part.strip() for part in text.split(",") if part.strip()]
        if not entries:
            raise KeyConfigError(f"{setting} is empty")
        keys: list[tuple[str, bytes]] = []
        for entry in entries:
            key_id, sep, encoded = entry.partition(":")
            if not sep or not _KEY_ID.match(key_id):
                raise KeyConfigError(f"{setting}: each key must be 'id:base64key'")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise KeyConfigError(f"{setting}: key {key_id!r} is not base64") from exc
            if len(raw) != 32:
                raise KeyConfigError(f"{setting}: key {key_id!r} must be 32 bytes")
            keys.append((key_id, raw))
        if len({key_id for key_id, _ in keys}) != len(keys):
            raise KeyConfigError(f"{setting}: key ids must be unique")
        return cls(tuple(keys))

    @property
    def newest(self) -> tuple[str, bytes]:
        return self.keys[0]

    def get(self, key_id: str) -> bytes | None:
        return next((raw for kid, raw in self.keys if kid == key_id), None)


@dataclass(frozen=True)
class Sealed:
    key_id: str
    blob: bytes  # nonce || ciphertext || tag


class DecryptionError(Exception):
    """A ciphertext did not open: unknown key id, wrong associated data, or tampering."""


class FieldCipher:
    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._aeads = {key_id: AESGCM(raw) for key_id, raw in ring.keys}

    @property
    def newest_key_id(self) -> str:
        return self._ring.newest[0]

    def seal(self, plaintext: str, aad: bytes) -> Sealed:
        key_id = self.newest_key_id
        nonce = os.urandom(_NONCE_BYTES)
        blob = nonce + self._aeads[key_id].encrypt(nonce, plaintext.encode(), aad)
        return Sealed(key_id, blob)

    def open(self, sealed: Sealed, aad: bytes) -> str:
        aead = self._aeads.get(sealed.key_id)
        if aead is None:
            raise DecryptionError(f"unknown key id {sealed.key_id!r}")
        nonce, body = sealed.blob[:_NONCE_BYTES], sealed.blob[_NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, body, aad).decode()
        except InvalidTag as exc:
            raise DecryptionError("ciphertext did not authenticate") from exc


class BlindIndex:
    """HMAC-SHA256 of a normalised value; the newest key writes, every key can be searched."""

    def __init__(self, ring: KeyRing) -> None:
        self._keys = [raw for _, raw in ring.keys]

    def digest(self, normalized: str) -> bytes:
        return _hmac(self._keys[0], normalized.encode())

    def candidates(self, normalized: str) -> list[bytes]:
        return [_hmac(key, normalized.encode()) for key in self._keys]


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


_TOKEN_VERSION = b"\x01"
_MAC_BYTES = 16


class TokenSigner:
    """Tokens ``base64url(version || uuid || mac)``; the MAC covers the purpose too, so an
    unsubscribe token is not a click token. Any key of the ring verifies, the newest signs.

    The format is frozen: these tokens sit in messages already delivered (an unsubscribe
    link must keep working for as long as the mail does), and every character counts in an
    SMS. itsdangerous cannot write it (its tokens are ``value.signature``), so it stays
    these few lines of stdlib ``hmac``; see docs/architecture.md, "Kept libraries"."""

    def __init__(self, ring: KeyRing) -> None:
        self._keys = [raw for _, raw in ring.keys]

    def sign(self, purpose: str, subject: uuid.UUID) -> str:
        payload = _TOKEN_VERSION + subject.bytes
        mac = self._mac(self._keys[0], purpose, payload)
        return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()

    def verify(self, purpose: str, token: str) -> uuid.UUID | None:
        if len(token) != 44 or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
            return None
        raw = base64.urlsafe_b64decode(token + "==")
        payload, mac = raw[:17], raw[17:]
        if payload[:1] != _TOKEN_VERSION:
            return None
        for key in self._keys:
            if hmac.compare_digest(mac, self._mac(key, purpose, payload)):
                return uuid.UUID(bytes=payload[1:])
        return None

    def codes(self, purpose: str, subject: uuid.UUID, digits: int) -> list[str]:
        """A short decimal code for ``subject`` under each key, the newest first (the one
        to send): the same MAC as a token's, reduced to ``digits`` digits. Short enough to
        type back in an SMS; not a secret on its own, since whoever replies must also hold
        the phone number the subject is for."""
        payload = _TOKEN_VERSION + subject.bytes
        return [
            str(int.from_bytes(self._mac(key, purpose, payload)[:8], "big") % 10**digits).zfill(
                digits
            )
            for key in self._keys
        ]

    @staticmethod
    def _mac(key: bytes, purpose: str, payload: bytes) -> bytes:
        return _hmac(key, purpose.encode() + b"\x00" + payload)[:_MAC_BYTES]


class _ClockedSigner(TimestampSigner):
    """itsdangerous reads the time through ``get_timestamp``; this one asks a clock."""

    def __init__(self, clock: Callable[[], float], keys: list[bytes], salt: str) -> None:
        super().__init__(keys, salt=salt, key_derivation="hmac", digest_method=hashlib.sha256)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


class TimedSigner:
    """Short signed values that expire, such as a session cookie: itsdangerous'
    ``TimestampSigner`` with the purpose as its salt (a value signed for one purpose does
    not verify for another) and HMAC-SHA256. The newest key of the ring signs and any key
    verifies, so a rotation does not sign everybody out. ``clock`` gives the signing time
    and the time ages are measured at."""

    def __init__(self, ring: KeyRing, clock: Callable[[], float] = time.time) -> None:
        self.ring = ring
        self._clock = clock
        self._signers: dict[str, TimestampSigner] = {}

    def sign(self, purpose: str, text: str) -> str:
        return self._signer(purpose).sign(text).decode()

    def verify(self, purpose: str, signed: str, max_age: int | None) -> str | None:
        """The signed text, or None when the signature is wrong or (given ``max_age``) the
        value was signed more than ``max_age`` seconds ago."""
        try:
            return self._signer(purpose).unsign(signed, max_age=max_age).decode()
        except (BadSignature, UnicodeDecodeError):  # SignatureExpired is a BadSignature
            return None

    def _signer(self, purpose: str) -> TimestampSigner:
        signer = self._signers.get(purpose)
        if signer is None:
            # itsdangerous signs with the last key and tries them all, newest first.
            oldest_first = [raw for _, raw in reversed(self.ring.keys)]
            signer = _ClockedSigner(self._clock, oldest_first, salt=purpose)
            self._signers[purpose] = signer
        return signer


@dataclass(frozen=True)
class Keys:
    cipher: FieldCipher
    blind_index: BlindIndex
    tokens: TokenSigner
    timed: TimedSigner
    generated: bool


def new_key_spec(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def load_keys(settings: CryptoSettings, *, production: bool) -> Keys:
    """Keys from settings; in embedded mode missing ones come from (or go into) the key file."""
    specs = {
        "encryption_keys": settings.encryption_keys,
        "blind_index_key": settings.blind_index_key,
        "token_key": settings.token_key,
    }
    generated = not all(specs.values())
    if generated:
        if production and not settings.allow_generated_keys:
            raise KeyConfigError(
                "BACKINSTOCK_ENCRYPTION_KEYS, BACKINSTOCK_BLIND_INDEX_KEY and "
                "BACKINSTOCK_TOKEN_KEY must be set with a PostgreSQL database "
                "(or set BACKINSTOCK_ALLOW_GENERATED_KEYS=true for a throwaway instance)"
            )
        stored = _load_or_create_key_file(Path(settings.key_file))
        specs = {name: value or stored[name] for name, value in specs.items()}
    token_ring = KeyRing.parse(specs["token_key"], "TOKEN_KEY")
    return Keys(
        cipher=FieldCipher(KeyRing.parse(specs["encryption_keys"], "ENCRYPTION_KEYS")),
        blind_index=BlindIndex(KeyRing.parse(specs["blind_index_key"], "BLIND_INDEX_KEY")),
        tokens=TokenSigner(token_ring),
        timed=TimedSigner(token_ring),
        generated=generated,
    )


def _load_or_create_key_file(path: Path) -> dict[str, str]:
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        return data
    data = {
        "encryption_keys": new_key_spec("local1"),
        "blind_index_key": new_key_spec("local1"),
        "token_key": new_key_spec("local1"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write a private temp file, then link it into place: the link fails if another process
    # won the race, and nobody ever reads a half-written key file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _load_or_create_key_file(path)
    finally:
        tmp.unlink()
    log.warning(
        "generated_keys",
        key_file=str(path),
        advice="keys were generated for the embedded mode; set BACKINSTOCK_ENCRYPTION_KEYS, "
        "BACKINSTOCK_BLIND_INDEX_KEY and BACKINSTOCK_TOKEN_KEY in production and keep them safe",
    )
    return data
