import pytest

from app import control
from app.auth import SubscribeOverride
from app.models import StreamPosition


def test_roundtrip_keeps_every_field():
    action = control.UserAction(
        "subscribe",
        "u1",
        "news",
        "c1",
        "s1",
        info=b'{"a":1}',
        data=b"\x00\x01",
        recover_since=StreamPosition(5, "ep"),
        expire_at=123,
        override=SubscribeOverride(presence=True),
        whitelist=["x"],
    )
    origin, got = control.decode(control.encode("node-1", action))
    assert origin == "node-1"
    assert got == action


@pytest.mark.parametrize(
    "raw", [b"", b"[]", b'{"op":"x"}', b'{"origin":"n","op":"x","user":"u","recover_since":[1]}']
)
def test_malformed_messages_raise_value_error(raw):
    with pytest.raises(ValueError):
        control.decode(raw)
