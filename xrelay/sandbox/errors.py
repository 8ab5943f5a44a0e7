"""
The error bodies of the sandbox's HTTP endpoints, in Microsoft's and Google's exact shapes.

Kept in one place so every endpoint fails the same way the real service does: clients
(msal, our token sources) parse C{error}, C{error_codes} and C{error_description}, and
operators read the C{AADSTS} text.  Nothing here may put a secret into a description.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import attrs


@attrs.frozen
class Response:
    """An HTTP response as the endpoint logic decides it; the web layer only writes it."""

    status: int
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()


class TokenError(Exception):
    """
    A refusal by the Microsoft identity platform: becomes the JSON error body.

    @ivar error: the OAuth 2.0 error (C{invalid_grant}, C{invalid_client}, ...).
    @ivar code: the AADSTS number.
    """

    def __init__(self, error: str, code: int, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: AADSTS{code}: {description}")
        self.error = error
        self.code = code
        self.description = description
        self.status = status


def aad_timestamp(now: float) -> str:
    """Microsoft's C{timestamp} format: C{2023-05-06 06:03:00Z}."""
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def aad_error(
    error: TokenError, now: float, error_base: str, correlation_id: str | None = None
) -> Response:
    """
    The Microsoft v2.0 error body, e.g.::

        {"error":"invalid_client","error_description":"AADSTS7000215: Invalid client
        secret provided. ...\\r\\nTrace ID: ...\\r\\nCorrelation ID: ...\\r\\nTimestamp:
        2023-05-06 06:03:00Z","error_codes":[7000215],"timestamp":"2023-05-06 06:03:00Z",
        "trace_id":"...","correlation_id":"...","error_uri":"https://.../error?code=7000215"}

    The correlation id echoes the client's C{client-request-id} header as Azure AD does.
    """
    trace_id = str(uuid.uuid4())
    correlation_id = correlation_id or str(uuid.uuid4())
    stamp = aad_timestamp(now)
    description = (
        f"AADSTS{error.code}: {error.description}\r\nTrace ID: {trace_id}\r\n"
        f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
    )
    return Response(
        error.status,
        {
            "error": error.error,
            "error_description": description,
            "error_codes": [error.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{error_base}/error?code={error.code}",
        },
    )


def graph_error(status: int, code: str, message: str, now: float, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """Microsoft Graph's error body: C{{"error": {"code", "message", "innerError"}}}."""
    request_id = str(uuid.uuid4())
    date = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return Response(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {"date": date, "request-id": request_id, "client-request-id": request_id},
            }
        },
        headers,
    )


def google_error(status: int, error: str, description: str) -> Response:
    """Google's token endpoint error body: C{{"error", "error_description"}}."""
    return Response(status, {"error": error, "error_description": description})
