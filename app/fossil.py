"""Fossil delta encoder: `create(origin, target)` -> a patch that turns origin into target.

The format is Fossil SCM's (fossil-scm.org delta_encoder_algorithm.wiki) and this is a port
of the Go package centrifuge uses (github.com/shadowspore/fossil-delta, `Create`), so the
patches are byte for byte the ones Centrifugo sends and every SDK's decoder (centrifuge-js
`fossil.ts`, centrifuge-python...) applies them. No maintained PyPI package does this.

Format: "<target length>\\n", then commands, integers written in base 64 with the digits
below: "<n>@<offset>," copies n bytes of origin from offset, "<n>:<bytes>" inserts n literal
bytes, and "<checksum>;" ends it. The encoder hashes origin in 16-byte blocks, rolls the same
hash over target, and at each position takes the longest match among at most 250 candidate
blocks of the same hash, extended backwards into the pending literal; a copy is only used
when it is at least as long as its own command.

Cost: pure Python, one pass over target with a rolling hash; about a millisecond for a 2 KB
document. The hub creates one patch per publication per worker, shared by all delta
subscribers of the channel, so this is not per-subscriber work.
"""

from __future__ import annotations

_NHASH = 16
_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"


def _put_int(out: bytearray, v: int) -> None:
    if v == 0:
        out += b"0"
        return
    buf = bytearray()
    while v > 0:
        buf.append(_DIGITS[v & 0x3F])
        v >>= 6
    buf.reverse()
    out += buf


def _digit_count(v: int) -> int:
    """Length of v in the base-64 form above (what a command costs, to judge a copy)."""
    i, x = 1, 64
    while v >= x:
        i += 1
        x <<= 6
    return i


def checksum(arr: bytes) -> int:
    """Fossil's 32-bit checksum: four interleaved byte sums, then the 0-3 trailing bytes."""
    s0 = s1 = s2 = s3 = 0
    n = len(arr)
    z = 0
    while n >= 16:
        s0 += arr[z] + arr[z + 4] + arr[z + 8] + arr[z + 12]
        s1 += arr[z + 1] + arr[z + 5] + arr[z + 9] + arr[z + 13]
        s2 += arr[z + 2] + arr[z + 6] + arr[z + 10] + arr[z + 14]
        s3 += arr[z + 3] + arr[z + 7] + arr[z + 11] + arr[z + 15]
        z += 16
        n -= 16
    while n >= 4:
        s0 += arr[z]
        s1 += arr[z + 1]
        s2 += arr[z + 2]
        s3 += arr[z + 3]
        z += 4
        n -= 4
    s3 += (s2 << 8) + (s1 << 16) + (s0 << 24)
    if n == 3:
        s3 += (arr[z + 2] << 8) + (arr[z + 1] << 16) + (arr[z] << 24)
    elif n == 2:
        s3 += (arr[z + 1] << 16) + (arr[z] << 24)
    elif n == 1:
        s3 += arr[z] << 24
    return s3 & 0xFFFFFFFF


def _hash_init(z: bytes, pos: int) -> tuple[int, int]:
    a = b = 0
    for i in range(_NHASH):
        x = z[pos + i]
        a = (a + x) & 0xFFFF
        b = (b + (_NHASH - i) * x) & 0xFFFF
    return a, b


def create(origin: bytes, target: bytes) -> bytes:
    out = bytearray()
    len_out = len(target)
    len_src = len(origin)
    _put_int(out, len_out)
    out += b"\n"

    if len_src <= _NHASH:
        # Too short to index: the whole target as one literal.
        _put_int(out, len_out)
        out += b":"
        out += target
        _put_int(out, checksum(target))
        out += b";"
        return bytes(out)

    # Index origin's 16-byte blocks by hash: landmark[h] is the last block with hash h,
    # collide[block] the previous block with the same hash (a chain per hash value).
    n_hash = len_src // _NHASH
    collide = [-1] * n_hash
    landmark = [-1] * n_hash
    for i in range(0, len_src - _NHASH, _NHASH):
        a, b = _hash_init(origin, i)
        hv = (a | (b << 16)) % n_hash
        collide[i // _NHASH] = landmark[hv]
        landmark[hv] = i // _NHASH

    base = 0
    while base + _NHASH < len_out:
        best_ofst = best_litsz = best_cnt = 0
        a, b = _hash_init(target, base)
        window = bytearray(target[base : base + _NHASH])  # the rolling hash's ring buffer
        ring = 0
        i = 0
        while True:
            limit = 250
            block = landmark[(a | (b << 16)) % n_hash]
            while block >= 0:
                limit -= 1
                if limit <= 0:
                    break
                src = block * _NHASH
                # Extend the match forwards from the block...
                x, y, j = src, base + i, 0
                while x < len_src and y < len_out and origin[x] == target[y]:
                    x += 1
                    y += 1
                    j += 1
                j -= 1
                # ...and backwards into the literal bytes not yet written.
                k = 1
                while k < src and k <= i and origin[src - k] == target[base + i - k]:
                    k += 1
                k -= 1
                ofst = src - k
                cnt = j + k + 1
                litsz = i - k
                sz = _digit_count(i - k) + _digit_count(cnt) + _digit_count(ofst) + 3
                if cnt >= sz and cnt > best_cnt:
                    best_cnt, best_ofst, best_litsz = cnt, ofst, litsz
                block = collide[block]

            if best_cnt > 0:
                if best_litsz > 0:
                    _put_int(out, best_litsz)
                    out += b":"
                    out += target[base : base + best_litsz]
                    base += best_litsz
                base += best_cnt
                _put_int(out, best_cnt)
                out += b"@"
                _put_int(out, best_ofst)
                out += b","
                break

            if base + i + _NHASH >= len_out:
                _put_int(out, len_out - base)
                out += b":"
                out += target[base:len_out]
                base = len_out
                break

            # Roll the hash one byte forward (16-bit arithmetic, as the reference).
            c = target[base + i + _NHASH]
            old = window[ring]
            window[ring] = c
            ring = (ring + 1) & (_NHASH - 1)
            a = (a - old + c) & 0xFFFF
            b = (b - _NHASH * old + a) & 0xFFFF
            i += 1

    if base < len_out:
        _put_int(out, len_out - base)
        out += b":"
        out += target[base:len_out]

    _put_int(out, checksum(target))
    out += b";"
    return bytes(out)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def worth_sending(origin: bytes, target: bytes) -> bytes | None:
    """The patch from `origin` to `target` when a delta subscriber should get it instead
    of `target` (live and recovered publications alike): smaller than `target`, and UTF-8
    when `target` is, since JSON clients get it as a string and a patch cut inside a
    character could not be one (binary data never reaches JSON clients)."""
    patch = create(origin, target)
    if len(patch) >= len(target):
        return None
    if not _is_utf8(patch) and _is_utf8(target):
        return None
    return patch
