"""Hypothesis strategies for what a stranger can send: client frames and WebSocket bytes.

Commands are generated from the protobuf descriptors of Centrifugo's client protocol, so
every request field is reached with values of its own type (the code behind the field
runs) or of a hostile one: wrong JSON types, integer strings Python's `int()` refuses
("--5", "²", 5,000 digits), numbers past 64 bits, deep nesting, invalid UTF-8, unknown
methods and fields. The same shapes feed the JSON codec (as text), the Protobuf codec (as
encoded messages, plus hand-made fields with the wrong wire type) and, framed by
`ws_frames`, the WebSocket parser.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor  # type: ignore[import-untyped]
from hypothesis import strategies as st

from app.protocol import METHODS
from app.protocol.gen import client_pb2 as pb

# --------------------------------------------------------------------------- JSON values

# Integer strings that look numeric to str.isdigit()/lstrip("-") but not to int(), or that
# int() takes but are out of every protocol range.
NASTY_INT_STRINGS = (
    "--5",
    "-",
    "",
    "²",
    "³",
    "½",
    "٣",
    "١٢",
    "+5",
    " 5",
    "5 ",
    "0x10",
    "1_000",
    "1e3",
    "-0",
    "007",
    "NaN",
    "Infinity",
    "18446744073709551616",
    "-9223372036854775809",
    "9" * 5000,
    "-" + "9" * 5000,
    "²" * 5000,
)
NASTY_INTS = (
    -1,
    -(2**31),
    2**31,
    2**32,
    2**53 + 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
)

nasty_int_strings = st.one_of(
    st.sampled_from(NASTY_INT_STRINGS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet="-+0123456789²³¹٣ _.e", max_size=24),
)
integers = st.one_of(
    st.integers(min_value=0, max_value=100),
    st.sampled_from(NASTY_INTS),
    st.integers(min_value=-(2**70), max_value=2**70),
)
# Strings that matter to channel parsing and tokens, and arbitrary ones (surrogates are
# not valid in JSON text, so st.text's default alphabet without them).
strings = st.one_of(
    st.sampled_from(["", "chat", "ns:chat", "$private", "user#1", "a:b:c", "#", "$", ":"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    nasty_int_strings,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(allow_nan=False, allow_infinity=False),
    strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(strings, inner, max_size=4)
    ),
    max_leaves=12,
)

# ------------------------------------------------------------- protocol-shaped values


def _scalar_for(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_BYTES:
        return json_values  # a raw JSON payload (data, info, ...)
    # 32/64-bit, signed or not: protobuf JSON writes 64-bit ints as strings.
    return st.one_of(integers, integers.map(str), nasty_int_strings)


def _well_typed(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    mt = field.message_type
    if mt is not None and mt.GetOptions().map_entry:
        value_field = mt.fields_by_name["value"]
        return st.dictionaries(strings, _value_for(value_field, depth + 1), max_size=3)
    if mt is not None:
        one = shaped(mt, depth + 1)
    else:
        one = _scalar_for(field)
    if field.is_repeated:
        return st.lists(one, max_size=3)
    return one


def _value_for(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Mostly a value of the field's own type (so the code behind it runs), sometimes
    any JSON value at all."""
    return st.one_of(_well_typed(field, depth), json_values) if depth < 3 else json_values


_SHAPES: dict[tuple[str, int], st.SearchStrategy[dict[str, Any]]] = {}


def shaped(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with a subset of `desc`'s fields (and sometimes unknown ones)."""
    key = (desc.full_name, depth)
    cached = _SHAPES.get(key)
    if cached is None:
        known = st.fixed_dictionaries(
            {},
            optional={f.name: _value_for(f, depth) for f in desc.fields},
        )
        unknown = st.dictionaries(strings, json_values, max_size=2)
        cached = _SHAPES[key] = st.tuples(known, unknown).map(lambda kv: {**kv[1], **kv[0]})
    return cached


_REQUESTS = {f.name: f.message_type for f in pb.Command.DESCRIPTOR.fields if f.message_type}

methods = st.sampled_from(METHODS)
command_ids: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=1, max_value=1000),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.sampled_from([-1, 2**32, 2**64, 1.5, "1", None, True, [], {}]),
)


@st.composite
def json_commands(draw: st.DrawFn, *, connect: bool = False) -> dict[str, Any]:
    """One command object; `connect=True` for a well-formed connect (a fuzzing session's
    first command, so the commands after it reach their handlers)."""
    if connect:
        return {"id": draw(st.integers(1, 10)), "connect": {}}
    method = draw(st.one_of(methods, strings))
    obj: dict[str, Any] = {"id": draw(command_ids)}
    desc = _REQUESTS.get(method)
    obj[method] = draw(shaped(desc) if desc is not None else json_values)
    if draw(st.integers(0, 9)) == 0:  # a second request in the same command
        obj[draw(methods)] = draw(json_values)
    return obj


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


deep_nesting = st.integers(min_value=200, max_value=5000)


@st.composite
def json_frames(draw: st.DrawFn) -> bytes:
    """A JSON client frame: newline-separated commands, some of them spliced with bytes
    no JSON encoder would write (deep nesting, invalid UTF-8, raw numbers)."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 9))
        if kind == 0:  # data nested deeper than any decoder's recursion guard
            d = draw(deep_nesting)
            opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
            body = opener * d + "1" + closer * d
            method = draw(st.sampled_from(["publish", "rpc", "connect", "send"]))
            parts.append(f'{{"id":1,"{method}":{{"channel":"x","data":{body}}}}}'.encode())
        elif kind == 1:  # a command nested deeply itself
            d = draw(deep_nesting)
            parts.append(b'{"id":1,"connect":' + b'{"a":' * d + b"1" + b"}" * d + b"}")
        elif kind == 2:  # invalid UTF-8 inside a string
            bad = draw(
                st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
            )
            parts.append(b'{"id":1,"connect":{"name":"' + bad + b'"}}')
        elif kind == 3:  # numbers JSON allows and Python's int() or float() may refuse
            num = draw(st.sampled_from(["1e400", "-1e400", "1" * 5000, "-0", "1E2", "0.1e-400"]))
            field = draw(st.sampled_from(["id", "offset", "limit", "epoch"]))
            parts.append(
                f'{{"id":2,"history":{{"channel":"x","{field}":{num},"since":{{"offset":{num}}}}}}}'.encode()
            )
        else:
            parts.append(_dumps(draw(json_commands())))
    sep = draw(st.sampled_from([b"\n", b"\r\n", b"\n\n"]))
    return sep.join(parts)


# --------------------------------------------------------------------------- Protobuf


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@st.composite
def pb_raw_fields(draw: st.DrawFn, max_fields: int = 6) -> bytes:
    """Hand-made protobuf fields with any number and wire type: a known field may arrive
    with the wrong wire type, a length may run past the end, a group may never close."""
    out = bytearray()
    for _ in range(draw(st.integers(0, max_fields))):
        number = draw(st.one_of(st.integers(1, 16), st.integers(0, 2**29)))
        wire = draw(st.integers(0, 7))
        out += varint(number << 3 | wire)
        if wire == 0:
            out += varint(draw(st.integers(0, 2**64 - 1)))
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 2:
            body = draw(st.one_of(st.binary(max_size=40), pb_raw_fields(max_fields=2)))
            out += varint(len(body) + draw(st.sampled_from([0, 0, 0, 1, -1, 1000]))) + body
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        else:
            out += draw(st.binary(max_size=8))
    return bytes(out)


def _fill(msg: Any, values: dict[str, Any]) -> None:
    """Set what protobuf can carry of a JSON-shaped dict (the rest is dropped)."""
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        field = fields.get(key)
        if field is None:
            continue
        mt = field.message_type
        try:
            if mt is not None and mt.GetOptions().map_entry:
                if not isinstance(value, dict):
                    continue
                container = getattr(msg, key)
                vf = mt.fields_by_name["value"]
                for k, v in value.items():
                    if vf.message_type is not None:
                        if isinstance(v, dict):
                            _fill(container[k], v)
                    else:
                        container[k] = v
            elif mt is not None:
                items = value if field.is_repeated else [value]
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict):
                        sub = getattr(msg, key).add() if field.is_repeated else getattr(msg, key)
                        sub.SetInParent()
                        _fill(sub, item)
            elif field.type == FieldDescriptor.TYPE_BYTES:
                blob = _dumps(value)
                if field.is_repeated:
                    getattr(msg, key).append(blob)
                else:
                    setattr(msg, key, blob)
            elif field.is_repeated:
                getattr(msg, key).extend(value if isinstance(value, list) else [value])
            else:
                setattr(msg, key, value)
        except (TypeError, ValueError, OverflowError):
            continue  # the wrong type for protobuf: not representable, skip it


@st.composite
def pb_commands(draw: st.DrawFn) -> bytes:
    """One encoded Command (without its length prefix)."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(pb_raw_fields())
    cmd = pb.Command()
    cmd.id = draw(st.integers(0, 2**32 - 1))
    method = draw(methods)
    request = getattr(cmd, method)
    request.SetInParent()
    _fill(request, draw(shaped(_REQUESTS[method])))
    body = cmd.SerializeToString()
    if kind == 1:  # a valid command with hand-made fields appended (last field wins)
        body += draw(pb_raw_fields(max_fields=3))
    return body


@st.composite
def pb_frames(draw: st.DrawFn) -> bytes:
    """A Protobuf client frame: varint-delimited commands, with lengths that may lie."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 3))):
        body = draw(pb_commands())
        skew = draw(st.sampled_from([0, 0, 0, 0, 1, -1, 2**31, 2**64 - 1]))
        out += varint(max(len(body) + skew, 0)) + body
    if draw(st.integers(0, 9)) == 0:
        out += draw(st.binary(max_size=12))  # trailing garbage
    return bytes(out)


# ------------------------------------------------------------------------ WebSocket

MASK = b"\x37\xfa\x21\x3d"


def ws_frame(
    payload: bytes,
    opcode: int = 1,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = MASK,
    length_form: int = 0,
    length_skew: int = 0,
) -> bytes:
    """A client frame (RFC 6455 §5.2). `length_form` 0 writes the shortest length field,
    1 and 2 force the 16- and 64-bit forms; `length_skew` makes the length lie."""
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    n = max(len(payload) + length_skew, 0)
    bit = 0x80 if mask is not None else 0
    if length_form == 0 and n < 126:
        head = bytes((first, bit | n))
    elif length_form <= 1 and n < 65536:
        head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + (n & (2**64 - 1)).to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


close_payloads = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.tuples(st.integers(0, 65535), st.binary(max_size=20)).map(
        lambda cr: cr[0].to_bytes(2, "big") + cr[1]
    ),
)


@st.composite
def ws_frames(draw: st.DrawFn, payloads: st.SearchStrategy[bytes]) -> bytes:
    """One client frame: usually well-formed around a payload from `payloads`, sometimes
    with reserved bits, unknown opcodes, no mask, a lying or non-minimal length, a
    fragment out of place or a control frame too long."""
    broken = draw(st.integers(0, 3)) == 0
    opcode = draw(st.sampled_from([1, 1, 1, 2, 0, 9, 10, 8]))
    if opcode == 8:
        payload = draw(close_payloads)
    elif opcode in (9, 10):
        payload = draw(st.binary(max_size=125))
    else:
        payload = draw(payloads)
    if not broken:
        return ws_frame(payload, opcode, fin=opcode != 0 or draw(st.booleans()))
    return ws_frame(
        payload if draw(st.booleans()) else draw(st.binary(max_size=300)),
        draw(st.one_of(st.just(opcode), st.integers(0, 15))),
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0, 0, 1, 2, 4, 7])),
        mask=draw(st.sampled_from([MASK, MASK, None, b"\x00\x00\x00\x00"])),
        length_form=draw(st.integers(0, 2)),
        length_skew=draw(st.sampled_from([0, 0, 0, 1, -1, 5, 70000, 2**63])),
    )


# -------------------------------------------------------------------- request heads

WS_PATH = "/connection/websocket"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="

header_names = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Upgrade",
            "Connection",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Protocol",
            "Sec-WebSocket-Extensions",
            "Origin",
            "Content-Length",
            "Transfer-Encoding",
            "Cookie",
        ]
    ),
    st.text(min_size=0, max_size=12),
)
header_values = st.one_of(
    st.sampled_from(
        [
            "websocket",
            "Upgrade",
            "13",
            KEY,
            "centrifuge-protobuf",
            "centrifuge-json, x",
            "permessage-deflate",
            "0",
            "chunked",
            "",
        ]
    ),
    st.text(max_size=40),
)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """A request head without its blank line: mostly a WebSocket upgrade with some lines
    changed, removed, duplicated or added; sometimes any text at all."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=200))
    target = draw(
        st.one_of(
            st.just(WS_PATH),
            st.just(WS_PATH + "?format=protobuf"),
            st.text(max_size=30).map(lambda q: WS_PATH + "?" + q),
            st.text(max_size=30),
        )
    )
    line = draw(
        st.one_of(
            st.just(f"GET {target} HTTP/1.1"),
            st.text(max_size=60).map(lambda s: "GET " + WS_PATH + s),
        )
    )
    headers = [
        ("Host", "127.0.0.1"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.integers(0, 2))
        if action == 0 and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        elif action == 1 and headers:
            i = draw(st.integers(0, len(headers) - 1))
            headers[i] = (headers[i][0], draw(header_values))
        else:
            headers.insert(
                draw(st.integers(0, len(headers))), (draw(header_names), draw(header_values))
            )
    sep = draw(st.sampled_from([": ", ":", " : ", ":\t"]))
    text = "\r\n".join([line, *(f"{k}{sep}{v}" for k, v in headers)])
    return text.encode("utf-8", "surrogatepass")
