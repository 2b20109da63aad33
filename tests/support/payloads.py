"""Publication payloads a parse-and-dump round trip would change (issue 14, point 3): the
server must pass each through byte for byte, as Centrifugo passes json.RawMessage."""

OPAQUE: dict[str, bytes] = {
    "big-int": b"123456789012345678901234567890",
    "uint64-overflow": b"18446744073709551616",
    "long-decimal": b"0.1000000000000000055511151231257827",
    "exponent": b"1E2",
    "duplicate-keys": b'{"a":1,"a":2}',
    "spaced-escaped": b'{ "k" : [ 1 , 2.50 , -0.0 , "\\u00fc\\ud83d\\ude00" ] }',
    "nested-900": b"[" * 900 + b"]" * 900,
}
