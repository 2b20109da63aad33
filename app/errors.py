"""Centrifugo's numbered client errors, disconnects and unsubscribe codes.

Codes and messages are protocol facts (centrifuge `errors.go`, `disconnect.go`,
`unsubscribe.go`); SDKs branch on the numbers, so they must never drift.
"""

from __future__ import annotations

# code -> (message, temporary)
_ERRORS: dict[int, tuple[str, bool]] = {
    100: ("internal server error", True),
    101: ("unauthorized", False),
    102: ("unknown channel", False),
    103: ("permission denied", False),
    104: ("method not found", False),
    105: ("already subscribed", False),
    106: ("limit exceeded", False),
    107: ("bad request", False),
    108: ("not available", False),
    109: ("token expired", False),
    110: ("expired", False),
    111: ("too many requests", True),
    112: ("unrecoverable position", False),
    113: ("concurrent pagination", True),
}

# code -> reason
_DISCONNECTS: dict[int, str] = {
    3000: "connection closed",
    3001: "shutdown",
    3004: "internal server error",
    3005: "connection expired",
    3006: "subscription expired",
    3008: "slow",
    3009: "write error",
    3010: "insufficient state",
    3011: "force reconnect",
    3012: "no pong",
    3013: "too many requests",
    3014: "state invalidated",
    3500: "invalid token",
    3501: "bad request",
    3502: "stale",
    3503: "force disconnect",
    3504: "connection limit",
    3505: "channel limit",
    3506: "inappropriate protocol",
    3507: "permission denied",
    3508: "not available",
    3509: "too many errors",
}

# Unsubscribe push codes.
UNSUBSCRIBE_SERVER = 2000
UNSUBSCRIBE_INSUFFICIENT_STATE = 2500
UNSUBSCRIBE_EXPIRED = 2501

UNSUBSCRIBE_REASONS: dict[int, str] = {
    UNSUBSCRIBE_SERVER: "server unsubscribe",
    UNSUBSCRIBE_INSUFFICIENT_STATE: "insufficient state",
    UNSUBSCRIBE_EXPIRED: "subscription expired",
}


class ClientError(Exception):
    """An error reply to one command; the connection stays usable.

    `ClientError(103)` fills the standard message and temporary flag; custom
    codes (400–1999, from proxies) must pass their own message.
    """

    __slots__ = ("code", "message", "temporary")

    def __init__(self, code: int, message: str | None = None, temporary: bool | None = None):
        std_message, std_temporary = _ERRORS.get(code, ("", False))
        self.code = code
        self.message = message if message is not None else std_message
        self.temporary = temporary if temporary is not None else std_temporary
        super().__init__(code, self.message)

    def to_dict(self) -> dict:
        out: dict = {"code": self.code, "message": self.message}
        if self.temporary:
            out["temporary"] = True
        return out

    def __repr__(self) -> str:
        return f"ClientError({self.code}, {self.message!r})"


class Disconnect(Exception):
    """Closes a connection with a code and reason (WebSocket close frame or push).

    Codes 3000–3499, 4000–4499 and >= 5000 tell SDKs to reconnect; others are terminal.
    """

    __slots__ = ("code", "reason", "detail")

    def __init__(self, code: int, reason: str | None = None, detail: str = ""):
        self.code = code
        self.reason = reason if reason is not None else _DISCONNECTS.get(code, "")
        # Why, for the server log only (the client sees code and reason).
        self.detail = detail
        super().__init__(code, self.reason)

    @property
    def reconnect(self) -> bool:
        c = self.code
        return not (3500 <= c <= 3999 or 4500 <= c <= 4999)

    def __repr__(self) -> str:
        return f"Disconnect({self.code}, {self.reason!r})"


# Frequently used codes, named for readability at call sites.
ERROR_INTERNAL = 100
ERROR_UNKNOWN_CHANNEL = 102
ERROR_PERMISSION_DENIED = 103
ERROR_METHOD_NOT_FOUND = 104
ERROR_ALREADY_SUBSCRIBED = 105
ERROR_LIMIT_EXCEEDED = 106
ERROR_BAD_REQUEST = 107
ERROR_NOT_AVAILABLE = 108
ERROR_TOKEN_EXPIRED = 109
ERROR_EXPIRED = 110
ERROR_UNRECOVERABLE_POSITION = 112

DISCONNECT_SHUTDOWN = 3001
DISCONNECT_SERVER_ERROR = 3004
DISCONNECT_EXPIRED = 3005
DISCONNECT_SUB_EXPIRED = 3006
DISCONNECT_SLOW = 3008
DISCONNECT_WRITE_ERROR = 3009
DISCONNECT_INSUFFICIENT_STATE = 3010
DISCONNECT_NO_PONG = 3012
DISCONNECT_INVALID_TOKEN = 3500
DISCONNECT_BAD_REQUEST = 3501
DISCONNECT_STALE = 3502
DISCONNECT_FORCE_NO_RECONNECT = 3503
DISCONNECT_CONNECTION_LIMIT = 3504
DISCONNECT_CHANNEL_LIMIT = 3505
DISCONNECT_INAPPROPRIATE_PROTOCOL = 3506
DISCONNECT_PERMISSION_DENIED = 3507
DISCONNECT_NOT_AVAILABLE = 3508
