"""Go durations: Centrifugo's config writes them as strings ("25s", "1m30s", "720h"), we hold
float seconds.

`parse_duration` reads what Go's `time.ParseDuration` reads (plus a bare number of seconds);
`format_duration` writes what Go's `time.Duration.String()` writes, so a rendered config and
`defaultenv` output look like Centrifugo's.
"""

import math
import re

__all__ = ["parse_duration", "format_duration"]


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: str | int | float) -> float:
    """Go duration string ("500ms", "1m30s", "720h") or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("duration must be finite")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    try:
        number = float(text)  # bare number: seconds (Go itself only accepts "0" here)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"invalid duration {value!r}")
        return number
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(f"invalid duration {value!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"invalid duration {value!r}")
    return sign * total


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if frac == 0:
        return str(whole)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def format_duration(seconds: float) -> str:
    """Seconds -> Go ``time.Duration.String()`` form ("25s", "1m30s", "720h0m0s", "500ms")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        text = f"{ns}ns"
    elif ns < 1_000_000:
        text = _fraction(ns, 1_000) + "µs"
    elif ns < 1_000_000_000:
        text = _fraction(ns, 1_000_000) + "ms"
    else:
        hours, rest = divmod(ns, 3600 * 10**9)
        minutes, rest = divmod(rest, 60 * 10**9)
        secs = _fraction(rest, 10**9) + "s"
        if hours:
            text = f"{hours}h{minutes}m{secs}"
        elif minutes:
            text = f"{minutes}m{secs}"
        else:
            text = secs
    return sign + text
