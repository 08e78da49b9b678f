"""Library errors become offloader's: a refusal of our credentials, or a catalog failure.

:func:`refusal` recognises the catalog or the object storage refusing offloader's
credentials (REST 401/403 and OAuth errors, S3 AccessDenied, InvalidAccessKeyId,
SignatureDoesNotMatch): an :class:`AuthenticationError`, never retried. Anything else is
a :class:`CatalogError` (:func:`failure`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from offloader.config import redact
from offloader.errors import (
    AuthenticationError,
    CatalogError,
    OffloaderError,
    first_line,
)

# How object storage says it refused the credentials: S3's error codes, as the server sends
# them (and botocore keeps them) and as PyArrow's AWS SDK names them in its messages.
_S3_REFUSALS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}
_S3_REFUSED = re.compile(
    r"\b(AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH)\b"
)
_BEARER_REFUSED = "Bearer token is invalid or expired"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it came from (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def refusal(exc: BaseException, properties: Mapping[str, Any]) -> AuthenticationError | None:
    """An :class:`AuthenticationError` naming the server if ``exc``, or an error it came from,
    says the catalog or the object storage refused the credentials; None otherwise.

    ``properties`` are the catalog's (or a table FileIO's) properties, for the catalog URI and
    the S3 endpoint; the message never holds a secret.
    """
    from pyiceberg.exceptions import ForbiddenError, OAuthError, RESTError, UnauthorizedError

    for error in _chain(exc):
        if isinstance(error, OAuthError | UnauthorizedError | ForbiddenError) or _BEARER_REFUSED in str(error):
            kind = "Iceberg REST catalog" if properties.get("type") == "rest" else "Iceberg catalog"
            where = f"the {kind} {redact(str(properties.get('uri', '')))}".rstrip()
            return AuthenticationError(f"authentication failed at {where}: {first_line(error)}")
        if isinstance(error, RESTError):
            return None  # any other reply of the catalog (a 5xx naming its own storage's AccessDenied) is not ours
        response = getattr(error, "response", None)  # botocore's ClientError, under s3fs's errors
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        if code in _S3_REFUSALS or _S3_REFUSED.search(str(error)):
            endpoint = properties.get("s3.endpoint")
            where = f"the S3 endpoint {redact(str(endpoint))}" if endpoint else "S3"
            return AuthenticationError(f"authentication failed at {where}: {first_line(exc)}")
    return None


def failure(exc: BaseException, message: str, properties: Mapping[str, Any]) -> OffloaderError:
    """The one error offloader raises for a library error: refused credentials, else a CatalogError."""
    return refusal(exc, properties) or CatalogError(f"{message}: {first_line(exc)}")
