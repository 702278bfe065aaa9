from __future__ import annotations

import base64
import os
import stat
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backinstock.config import CryptoSettings
from backinstock.crypto import (
    BlindIndex,
    DecryptionError,
    FieldCipher,
    KeyConfigError,
    KeyRing,
    Sealed,
    TimedSigner,
    TokenSigner,
    load_keys,
    new_key_spec,
)


def ring(*ids: str) -> KeyRing:
    return KeyRing.parse(",".join(new_key_spec(i) for i in ids), "TEST")


@given(st.text(max_size=200), st.binary(max_size=32))
def test_seal_open_round_trip(plaintext: str, aad: bytes) -> None:
    cipher = FieldCipher(ring("k1"))
    sealed = cipher.seal(plaintext, aad)
    assert cipher.open(sealed, aad) == plaintext


def test_ciphertext_is_bound_to_its_associated_data_and_is_randomised() -> None:
    cipher = FieldCipher(ring("k1"))
    a, b = cipher.seal("+8613800138000", b"row-a"), cipher.seal("+8613800138000", b"row-a")
    assert a.blob != b.blob
    assert b"13800138000" not in a.blob
    with pytest.raises(DecryptionError):
        cipher.open(a, b"row-b")
    with pytest.raises(DecryptionError):
        cipher.open(Sealed(a.key_id, a.blob[:-1] + bytes([a.blob[-1] ^ 1])), b"row-a")


def test_old_keys_open_new_key_seals() -> None:
    old = ring("k1")
    sealed_old = FieldCipher(old).seal("x", b"")
    newer = KeyRing((*ring("k2").keys, *old.keys))
    cipher = FieldCipher(newer)
    assert cipher.open(sealed_old, b"") == "x"
    assert cipher.seal("x", b"").key_id == "k2"
    with pytest.raises(DecryptionError):
        FieldCipher(ring("k3")).open(sealed_old, b"")


def test_blind_index_is_keyed_and_searchable_across_rotation() -> None:
    k1, k2 = ring("k1"), ring("k2")
    assert BlindIndex(k1).digest("a") == BlindIndex(k1).digest("a")
    assert BlindIndex(k1).digest("a") != BlindIndex(k2).digest("a")
    rotated = BlindIndex(KeyRing((*k2.keys, *k1.keys)))
    assert BlindIndex(k1).digest("a") in rotated.candidates("a")


def test_tokens_verify_only_for_their_purpose_and_key() -> None:
    signer = TokenSigner(ring("k1"))
    subject = uuid.uuid4()
    token = signer.sign("unsubscribe", subject)
    assert signer.verify("unsubscribe", token) == subject
    assert signer.verify("click", token) is None
    assert TokenSigner(ring("k9")).verify("unsubscribe", token) is None
    assert signer.verify("unsubscribe", _tampered(token)) is None


def _tampered(token: str) -> str:
    """One character of the signature changed. Not the last one: in unpadded base64 its
    low bits may be unused, so changing it can leave the decoded bytes as they were."""
    at = len(token) - 5
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]


def test_timed_values_verify_for_their_purpose_keys_and_lifetime() -> None:
    now = [1_000_000.0]
    old, new = ring("k1"), ring("k2")
    signer = TimedSigner(old, clock=lambda: now[0])
    signed = signer.sign("dashboard-session", "abc")
    assert signer.verify("dashboard-session", signed, max_age=60) == "abc"
    assert signer.verify("other-purpose", signed, max_age=60) is None
    assert TimedSigner(new).verify("dashboard-session", signed, max_age=None) is None
    rotated = TimedSigner(KeyRing((*new.keys, *old.keys)), clock=lambda: now[0])
    assert rotated.verify("dashboard-session", signed, max_age=60) == "abc", "old key verifies"
    assert signer.verify("dashboard-session", rotated.sign("dashboard-session", "x"), 60) is None
    tampered = _tampered(signed)
    assert signer.verify("dashboard-session", tampered, max_age=60) is None
    now[0] += 61
    assert signer.verify("dashboard-session", signed, max_age=60) is None, "expired"
    assert signer.verify("dashboard-session", signed, max_age=None) == "abc"


@pytest.mark.parametrize(
    "spec",
    ["", "k1", "k1:notbase64!", "k1:" + base64.b64encode(b"short").decode(), "bad id:" + "A" * 44],
)
def test_malformed_key_rings_are_refused(spec: str) -> None:
    with pytest.raises(KeyConfigError):
        KeyRing.parse(spec, "TEST")


def test_embedded_mode_generates_a_private_key_file(tmp_path: Path) -> None:
    settings = CryptoSettings(
        encryption_keys="", blind_index_key="", token_key="", key_file=str(tmp_path / "k.json")
    )
    first = load_keys(settings, production=False)
    assert first.generated
    mode = stat.S_IMODE(os.stat(tmp_path / "k.json").st_mode)
    assert mode == 0o600
    again = load_keys(settings, production=False)
    sealed = first.cipher.seal("x", b"")
    assert again.cipher.open(sealed, b"") == "x"


def test_production_refuses_generated_keys_unless_allowed(tmp_path: Path) -> None:
    settings = CryptoSettings(
        encryption_keys="", blind_index_key="", token_key="", key_file=str(tmp_path / "k.json")
    )
    with pytest.raises(KeyConfigError):
        load_keys(settings, production=True)
    allowed = CryptoSettings(
        encryption_keys="",
        blind_index_key="",
        token_key="",
        key_file=str(tmp_path / "k.json"),
        allow_generated_keys=True,
    )
    assert load_keys(allowed, production=True).generated
