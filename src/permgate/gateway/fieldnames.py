"""The request header names the data plane looks up on every request, as multidict
``istr``: a ``CIMultiDict`` finds an ``istr`` without case-folding it first, which is
about half the cost of a lookup by a plain ``str`` (the same fields are found)."""

from __future__ import annotations

from typing import Final

from multidict import istr

__all__ = [
    "AUTHORIZATION",
    "CONNECTION",
    "CONTENT_LENGTH",
    "EXPECT",
    "HOST",
    "TRACEPARENT",
    "TRANSFER_ENCODING",
    "X_REQUEST_ID",
]

AUTHORIZATION: Final = istr("Authorization")
CONNECTION: Final = istr("Connection")
CONTENT_LENGTH: Final = istr("Content-Length")
EXPECT: Final = istr("Expect")
HOST: Final = istr("Host")
TRACEPARENT: Final = istr("traceparent")
TRANSFER_ENCODING: Final = istr("Transfer-Encoding")
X_REQUEST_ID: Final = istr("X-Request-Id")
