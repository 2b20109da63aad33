"""The server API's errors: its codes and messages, and how an error body is written.

Errors are `ClientError` with the server API codes and messages (100, 102, 104, 107, 108,
112). `ApiDecodeError` (a 107) marks a request whose JSON does not fit the method's shape
(wrong types): Centrifugo decodes API bodies into typed structs, so the HTTP layer answers
those with a plain HTTP 400 instead of a 107 in the body.
"""

from __future__ import annotations

from typing import Any

from app.errors import ClientError

# Server API error messages differ from the client protocol ones for 104 and 113.
API_ERROR_MESSAGES: dict[int, str] = {
    100: "internal server error",
    102: "unknown channel",
    104: "not found",
    107: "bad request",
    108: "not available",
    112: "unrecoverable position",
    113: "conflict",
}


def api_error(code: int) -> ClientError:
    return ClientError(code, API_ERROR_MESSAGES.get(code))


class ApiDecodeError(ClientError):
    """The request does not decode into the method's request type (HTTP answers 400)."""

    def __init__(self, detail: str = ""):
        super().__init__(107, API_ERROR_MESSAGES[107])
        self.detail = detail


def error_body(err: ClientError) -> dict[str, Any]:
    """`{"code", "message"}` as the server API writes errors (no `temporary` flag)."""
    return {"code": err.code, "message": API_ERROR_MESSAGES.get(err.code, err.message)}
