"""The small pages a shopper sees after following an unsubscribe or a confirmation link:
no script, no external resource."""

from __future__ import annotations

from html import escape

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1.1rem;padding:.6rem 1.4rem;cursor:pointer}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def confirm_unsubscribe(action: str) -> str:
    body = (
        "<p>Stop back-in-stock messages for this product? / 不再接收该商品的到货通知？</p>"
        f'<form method="post" action="{escape(action)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe / 退订</button></form>'
    )
    return _PAGE.format(title="Unsubscribe", body=body)


def unsubscribed() -> str:
    body = "<p>You will not hear from us about this product again. / 已退订，不会再收到通知。</p>"
    return _PAGE.format(title="Unsubscribed", body=body)


def invalid_link() -> str:
    body = "<p>This link is not valid. / 链接无效。</p>"
    return _PAGE.format(title="Link not valid", body=body)


def confirm_subscription(action: str) -> str:
    body = (
        "<p>Tell me when this product is back in stock. / 商品到货时通知我。</p>"
        f'<form method="post" action="{escape(action)}">'
        '<button type="submit">Confirm / 确认</button></form>'
    )
    return _PAGE.format(title="Confirm your alert / 确认到货提醒", body=body)


def confirmed(position: int | None) -> str:
    place = (
        f"<p>You are number {position} in line. / 您目前排在第 {position} 位。</p>"
        if position
        else ""
    )
    body = (
        "<p>Confirmed: we will tell you when it is back. / 已确认，到货后我们会通知您。</p>" + place
    )
    return _PAGE.format(title="Confirmed / 已确认", body=body)


def confirmation_expired() -> str:
    body = (
        "<p>This request has expired or was withdrawn: please ask again on the product page. "
        "/ 此申请已过期或已取消，请回到商品页面重新订阅。</p>"
    )
    return _PAGE.format(title="Link expired / 链接已过期", body=body)
