"""A product name built to inject email headers, sent the way production sends it: through
the API, a wave, the worker and SmtpEmailSender (aiosmtplib) to the fake SMTP relay."""

from __future__ import annotations

from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import httpx
import pytest

from tests.conftest import WorkerStarter
from tests.fakes.smtp import FakeSMTP
from tests.helpers import bearer, subscription_body
from tests.restocks.helpers import at
from tests.workers import settle

# An RFC 2047 word whose decoded text is CRLF, a Reply-To header, a blank line and a body.
HOSTILE = "=?utf-8?q?Deal=0D=0AReply-To:_attacker@evil.example=0D=0A=0D=0APHISHING?= x"
OUR_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
]


@pytest.fixture
def smtp() -> Iterator[FakeSMTP]:
    with FakeSMTP() as fake:
        yield fake


async def test_a_hostile_product_name_adds_no_header_or_body_line(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    start_worker: WorkerStarter,
    smtp: FakeSMTP,
) -> None:
    key = api_keys["all"]
    # One product named by the subscribe call, one by the restock (its shopper sent a link
    # but no name: a name in the shopper's locale would be the one their message uses).
    for sku, contact, name in [
        ("SKU-SUB", "sub@mailbox.example", HOSTILE),
        ("SKU-RESTOCK", "restock@mailbox.example", None),
    ]:
        product = {"url": "https://shop.example/p/1", **({"name": name} if name else {})}
        body = subscription_body(
            sku=sku, channel="email", contact=contact, locale="en", product=product
        )
        response = await client.post("/v1/subscriptions", json=body, headers=bearer(key))
        assert response.status_code == 201, response.text
    start_worker(
        smtp_host=FakeSMTP.hostname,
        smtp_port=smtp.port,
        smtp_starttls="false",
        smtp_from="Shop <shop@shop.example>",
    )
    for sku, product in [("SKU-SUB", None), ("SKU-RESTOCK", {"name": HOSTILE})]:
        restock = {"event_id": f"e-{sku}", "sku": sku, "available": 5, "occurred_at": at(0)}
        if product:
            restock["product"] = product
        response = await client.post("/v1/restocks", json=restock, headers=bearer(key))
        assert response.status_code == 202, response.text

    await settle()
    assert sorted(to for m in smtp.messages for to in m.rcpt_tos) == [
        "restock@mailbox.example",
        "sub@mailbox.example",
    ]
    for received in smtp.messages:
        head = received.raw.partition(b"\r\n\r\n")[0].decode("ascii")
        names = [line.partition(":")[0] for line in head.split("\r\n") if line[:1] not in " \t"]
        assert names == OUR_HEADERS
        parsed = BytesParser(policy=policy.default).parsebytes(received.raw)
        assert isinstance(parsed, EmailMessage)
        assert list(parsed.keys()) == OUR_HEADERS
        assert HOSTILE in str(parsed["Subject"])  # shown literally, never decoded
        text = parsed.get_body(("plain",))
        assert text is not None and HOSTILE in str(text.get_content())
        assert not any(part.defects for part in parsed.walk())
