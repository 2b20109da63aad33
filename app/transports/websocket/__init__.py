"""The WebSocket wing: every WebSocket endpoint and the pieces they share, one job each.

- `handshake.py`: the opening handshake (which requests are upgrades, the accept key,
  sub-protocol and codec, the permessage-deflate offer).
- `frames.py`: RFC 6455 framing (server frames, close and pong frames, unmasking, the
  client frame reader with its close codes 1002/1007/1009).
- `deflate.py`: permessage-deflate's compressor and Centrifugo's compression settings.
- `connection.py`: the connection contract (`WebSocketConnection`) a transport holds,
  whichever server accepted the socket, and aiohttp's response adapted to it.
- `transport.py`: the bidirectional `WebSocketTransport` a Client writes to (and its
  deflate variant).
- `lean.py`: the lean server of plain upgrades (`LeanServer`, `LeanWebSocket` with its
  `Phase`); everything else it hands to aiohttp.
- `handler.py`: the bidirectional endpoint on aiohttp's handler (what the lean server hands
  over: compression, odd requests).
- `uni.py`: the unidirectional endpoint (`uni_websocket`).

Kept light on purpose: import the module you need (`app.transports.websocket.lean`, ...).
"""
