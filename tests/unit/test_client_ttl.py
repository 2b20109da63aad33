"""`ttl` in connect/subscribe/refresh replies is the protocol's uint32 (Centrifugo sends
uint32(ttl)): a far but valid int64 expiry is capped, never an encoder error."""

from __future__ import annotations

import time

from app.client.state import MAX_TTL, ttl_until
from app.protocol import protobuf


def test_ttl_is_seconds_left_within_uint32() -> None:
    now = time.time()
    assert ttl_until(now - 10) == 0
    assert 99 <= ttl_until(now + 100) <= 100
    assert ttl_until(2**40) == MAX_TTL == 2**32 - 1
    assert ttl_until(2**63 - 1) == MAX_TTL


def test_capped_ttl_encodes_in_protobuf() -> None:
    result = {"client": "c", "version": "v", "expires": True, "ttl": ttl_until(2**40)}
    assert protobuf.ProtobufCodec().encode_reply(1, "connect", result)
