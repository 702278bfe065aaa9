"""The small pages a shopper sees after following an unsubscribe link."""

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
