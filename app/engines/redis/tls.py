"""TLS to Redis: a `tls` / `sentinel_tls` block (or a `rediss://` address) turned into a dial.

Centrifugo's rules (internal/redisshard): `tls.enabled` builds a TLS config from the block
(PEM values as raw text, base64 or a file path, app/tls.py) for every data connection
of the section; without it, a `rediss://` or `rediss+sentinel://` address or the
`tls_enabled=true` query option turns on TLS with the system roots. Sentinel connections take
`sentinel_tls` (or `rediss+sentinel://`, `sentinel_tls_enabled=true`) the same way. TLS 1.2 at
least. `server_name` is the name checked against the certificate and sent as SNI; without it
the host dialled is (an IP address is checked against the certificate's IP SANs).

One dial serves every path that opens a connection: the implicit pipelines and the PUB/SUB
readers (asyncio `create_connection` in connect.open_connection), and redis-py's clients
through the connection classes below (standalone, Cluster nodes, Sentinel-managed masters,
the Sentinels themselves).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelManagedConnection

from app.config import TLSConfig
from app.tls import ssl_context

__all__ = ["TLSDial", "dial_from_config", "connection_class", "sentinel_connection_class"]

_ON = TLSConfig(enabled=True)


class TLSSettingError(ValueError):
    """A TLS setting that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True, eq=False)
class TLSDial:
    """How to open TLS to one kind of Redis node (data nodes or Sentinels)."""

    context: ssl.SSLContext
    server_name: str = ""  # "": the host dialled

    def server_hostname(self, host: str) -> str:
        return self.server_name or host

    def connect_kwargs(self, host: str) -> dict[str, Any]:
        """Keyword arguments of asyncio's `create_connection` / `open_connection`."""
        return {"ssl": self.context, "server_hostname": self.server_hostname(host)}


def dial_from_config(block: TLSConfig, what: str, turned_on: bool) -> TLSDial | None:
    """The dial for `block` (the config key `what`, e.g. "engine.redis.tls"): the block's own
    settings when `block.enabled`, the system defaults when only the address asks for TLS
    (`turned_on`), None otherwise. Raises TLSSettingError naming the unusable key."""
    if block.enabled:
        if bool(block.cert_pem) != bool(block.key_pem):
            # Centrifugo skips a lone half of a key pair without a word: a client
            # certificate the operator asked for would silently not be presented.
            have, missing = ("cert_pem", "key_pem") if block.cert_pem else ("key_pem", "cert_pem")
            raise TLSSettingError(f"{what}.{missing}: required with {what}.{have}")
        try:
            context = ssl_context(block, what)
        except ValueError as e:
            raise TLSSettingError(str(e)) from None
        assert context is not None
        return TLSDial(context, block.server_name)
    if turned_on:
        context = ssl_context(_ON, what)
        assert context is not None
        return TLSDial(context)
    return None


# --- redis-py ---


class _DialConnection(Connection):
    """A redis-py connection that dials TLS with the class's `dial` (redis-py's own
    SSLConnection builds its context from file names and knows no server name)."""

    dial: TLSDial

    def _connection_arguments(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, **self.dial.connect_kwargs(self.host)}


class _DialSentinelConnection(SentinelManagedConnection):
    """Same for connections to the master a Sentinel names (address resolved per connect)."""

    dial: TLSDial

    def _connection_arguments(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, **self.dial.connect_kwargs(self.host)}


def connection_class(dial: TLSDial) -> type[Connection]:
    """A Connection class (redis-py's pools take a class, not an instance) dialling `dial`."""
    return type("RedisTLSConnection", (_DialConnection,), {"dial": dial})


def sentinel_connection_class(dial: TLSDial) -> type[SentinelManagedConnection]:
    return type("RedisSentinelTLSConnection", (_DialSentinelConnection,), {"dial": dial})
