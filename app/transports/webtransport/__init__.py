"""WebTransport over HTTP/3 (Centrifugo's experimental `webtransport` transport).

`listener.py` is the entry point (`add_listener(app, cfg)`, called by app/web.py when
`http_server.http3.enabled`); the rest, one job each: `udp_slots.py` (the worker's UDP
socket), `quic_config.py` (TLS for QUIC), `h3.py` (one QUIC connection: requests to
sessions), `session.py` (one session driving a Client), `transport.py` (what the Client
writes to), `framing.py` (commands cut from the stream). Imports nothing: aioquic loads only
when HTTP/3 is on.
"""
