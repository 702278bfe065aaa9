"""Input types every schema uses for what clients send.

One rule per kind, checked at the boundary, so that no value that a store or a provider
would refuse gets past validation (a 422 naming the field, never a 500 later):

- :data:`Text`: one line of Unicode that UTF-8, PostgreSQL and an email header can all hold:
  no lone surrogates, no NUL or other control characters (C0, DEL, C1), no line or
  paragraph separators. Lengths are set per field (``Field(max_length=...)``), from the
  column that stores it.

Error messages describe the rule and never repeat the value.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# Lone surrogates (UTF-8 cannot encode them), C0 controls with NUL, CR and LF, DEL, C1
# controls, and U+2028/U+2029 (line breaks to some readers).
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _one_line_text(value: str) -> str:
    if _NOT_TEXT.search(value) is None:
        return value
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode (it holds a lone surrogate)")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    raise ValueError("must be one line without control characters")


Text = Annotated[str, AfterValidator(_one_line_text)]
