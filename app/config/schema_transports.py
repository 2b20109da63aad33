"""The client transport sections of the config schema: WebSocket, SSE, HTTP-stream, emulation,
WebTransport and the unidirectional ones. Re-exported by app/config/schema.py; see it for
what a schema class is and how field docstrings become `centrifugo configdoc`."""

from dataclasses import dataclass

from app.config.schema_parts import (
    CodeTransformsConfig,
    TLSConfig,
)
from app.config.section import Duration, Section, subsection

__all__ = [
    "WebSocketConfig",
    "SSEConfig",
    "HTTPStreamConfig",
    "EmulationConfig",
    "WebTransportConfig",
    "UniWebSocketConfig",
    "UniSSEConfig",
    "UniHTTPStreamConfig",
    "UniGRPCConfig",
]


@dataclass(frozen=True, slots=True)
class WebSocketConfig(Section):
    disabled: bool = False
    """Do not serve the bidirectional WebSocket endpoint."""
    handler_prefix: str = "/connection/websocket"
    """Path of the bidirectional WebSocket endpoint."""
    compression: bool = False
    """Offer permessage-deflate compression to clients that ask for it; costs CPU for every
    message."""
    compression_min_size: int = 0
    """Messages of at most this many bytes are sent uncompressed; `0` compresses every message
    (with `compression` on)."""
    compression_level: int = 1
    """Deflate level, `1` (fastest) to `9` (smallest); a value outside `-2..9` is logged and `1`
    used."""
    read_buffer_size: int = 0
    """Read buffer size of Centrifugo's Go WebSocket library, in bytes. Not used here: asyncio
    reads and writes through its own buffers."""
    use_write_buffer_pool: bool = False
    """Share write buffers between connections in Centrifugo's Go WebSocket library. Not used
    here: asyncio reads and writes through its own buffers."""
    write_buffer_size: int = 0
    """Write buffer size of Centrifugo's Go WebSocket library, in bytes. Not used here: asyncio
    reads and writes through its own buffers."""
    write_timeout: Duration = Duration(1.0)
    """How long outgoing bytes may wait for the client to take them before the connection is
    closed; `0` means no limit."""
    message_size_limit: int = 65536
    """Largest message a client may send, in bytes; a bigger one closes the connection (1009).
    `0` means `65536`."""
    decompressed_message_size_limit: int = 0
    """Largest message after permessage-deflate decompression, in bytes, which stops compression
    bombs; `0` means ten times `message_size_limit`."""


@dataclass(frozen=True, slots=True)
class SSEConfig(Section):
    enabled: bool = False
    """Serve the bidirectional Server-Sent Events transport; its clients send later commands
    through the emulation endpoint."""
    handler_prefix: str = "/connection/sse"
    """Path of the SSE endpoint."""
    max_request_body_size: int = 65536
    """Largest connect request body, in bytes; `0` means `65536`."""


@dataclass(frozen=True, slots=True)
class HTTPStreamConfig(Section):
    enabled: bool = False
    """Serve the bidirectional HTTP-streaming transport; its clients send later commands through
    the emulation endpoint."""
    handler_prefix: str = "/connection/http_stream"
    """Path of the HTTP-streaming endpoint."""
    max_request_body_size: int = 65536
    """Largest connect request body, in bytes; `0` means `65536`."""


@dataclass(frozen=True, slots=True)
class EmulationConfig(Section):
    handler_prefix: str = "/emulation"
    """Path of the emulation endpoint, where SSE and HTTP-streaming clients post their commands;
    served whenever one of those transports is enabled."""
    max_request_body_size: int = 65536
    """Largest command request body, in bytes; `0` means `65536`."""


@dataclass(frozen=True, slots=True)
class WebTransportConfig(Section):
    enabled: bool = False
    """Serve the WebTransport (HTTP/3) transport, experimental in Centrifugo; requires
    `http_server.http3.enabled` (and so TLS)."""
    handler_prefix: str = "/connection/webtransport"
    """Path of the WebTransport endpoint."""
    message_size_limit: int = 65536
    """Largest message a WebTransport client may send, in bytes."""


@dataclass(frozen=True, slots=True)
class UniWebSocketConfig(Section):
    enabled: bool = False
    """Serve the unidirectional WebSocket transport: the client sends only its connect command
    and then receives pushes."""
    handler_prefix: str = "/connection/uni_websocket"
    """Path of the unidirectional WebSocket endpoint."""
    compression: bool = False
    """Offer permessage-deflate compression to clients that ask for it; costs CPU for every
    message."""
    compression_min_size: int = 0
    """Messages of at most this many bytes are sent uncompressed; `0` compresses every message
    (with `compression` on)."""
    compression_level: int = 1
    """Deflate level, `1` (fastest) to `9` (smallest); a value outside `-2..9` is logged and `1`
    used."""
    read_buffer_size: int = 0
    """Read buffer size of Centrifugo's Go WebSocket library, in bytes. Not used here: asyncio
    reads and writes through its own buffers."""
    use_write_buffer_pool: bool = False
    """Share write buffers between connections in Centrifugo's Go WebSocket library. Not used
    here: asyncio reads and writes through its own buffers."""
    write_buffer_size: int = 0
    """Write buffer size of Centrifugo's Go WebSocket library, in bytes. Not used here: asyncio
    reads and writes through its own buffers."""
    write_timeout: Duration = Duration(1.0)
    """How long outgoing bytes may wait for the client to take them before the connection is
    closed; `0` means no limit."""
    message_size_limit: int = 65536
    """Largest message a client may send (its connect command), in bytes; `0` means `65536`."""
    decompressed_message_size_limit: int = 0
    """Largest message after permessage-deflate decompression, in bytes; `0` means ten times
    `message_size_limit`."""
    disable_closing_handshake: bool = False
    """Close connections without sending a WebSocket close frame, as Centrifugo did before 6.5.1."""
    disable_disconnect_push: bool = False
    """Send no disconnect push before closing; the close frame already carries the same code and
    reason."""
    join_push_messages: bool = False
    """Send pushes that are ready together in one WebSocket message, separated as the client
    protocol delimits them (newlines in JSON); the client must split them."""


@dataclass(frozen=True, slots=True)
class UniSSEConfig(Section):
    enabled: bool = False
    """Serve the unidirectional Server-Sent Events transport."""
    handler_prefix: str = "/connection/uni_sse"
    """Path of the unidirectional SSE endpoint."""
    max_request_body_size: int = 65536
    """Largest connect request body (POST), in bytes; `0` means no limit."""
    connect_code_to_http_response: CodeTransformsConfig = subsection(CodeTransformsConfig)
    """Answer chosen connect errors (including a connect proxy's) with an HTTP status and body
    instead of an event stream."""


@dataclass(frozen=True, slots=True)
class UniHTTPStreamConfig(Section):
    enabled: bool = False
    """Serve the unidirectional HTTP-streaming transport."""
    handler_prefix: str = "/connection/uni_http_stream"
    """Path of the unidirectional HTTP-streaming endpoint."""
    max_request_body_size: int = 65536
    """Largest connect request body, in bytes; `0` means no limit."""
    connect_code_to_http_response: CodeTransformsConfig = subsection(CodeTransformsConfig)
    """Answer chosen connect errors (including a connect proxy's) with an HTTP status and body
    instead of a stream."""


@dataclass(frozen=True, slots=True)
class UniGRPCConfig(Section):
    enabled: bool = False
    """Serve the unidirectional gRPC transport on its own port."""
    address: str = ""
    """Interface the unidirectional gRPC server listens on; empty listens on every interface."""
    port: int = 11000
    """Port of the unidirectional gRPC server."""
    max_receive_message_size: int = 0
    """Largest message the server accepts from a client, in bytes; `0` keeps gRPC's default (4
    MiB)."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS of the unidirectional gRPC server."""
