"""Go (RE2) regular expressions as Python `re` patterns with the same meaning."""

from __future__ import annotations

import re

_MULTILINE_FLAG = re.compile(r"\(\?[a-zA-Z]*m[a-zA-Z]*[:)]")
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": r"\x00-\x7f",
    "blank": r"\t ",
    "cntrl": r"\x00-\x1f\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": r"!-/:-@\[-`{-~",
    "space": r"\t\n\v\f\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


def compile_channel_regex(pattern: str) -> re.Pattern[str]:
    r"""Compile a Go (RE2) `channel_regex` so that it means the same in Python.

    Differences that matter for channel names: Go's `$` (without the m flag)
    matches only at the very end, while Python's also matches before a final
    newline, so it becomes `\Z`; Go's `\z` is Python's `\Z`; Go's named group
    `(?<name>` is Python's `(?P<name>`; ASCII classes like `[[:alnum:]]` are
    spelled out. Raises re.error for a bad pattern.
    """
    multiline = _MULTILINE_FLAG.search(pattern) is not None
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            out.append("\\Z" if nxt == "z" and not in_class else c + nxt)
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2 : end] if end > 0 else ""
                negated = name.startswith("^")
                chars = _POSIX_CLASSES.get(name.lstrip("^"))
                if chars is not None and not negated:
                    out.append(chars)
                    i = end + 2
                    continue
            if c == "]":
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            # A "]" right after "[" or "[^" is a literal, not the end of the class.
            j = i + 1
            if j < n and pattern[j] == "^":
                out.append("^")
                j += 1
            if j < n and pattern[j] == "]":
                out.append("]")
                j += 1
            i = j
            continue
        elif c == "$" and not multiline:
            out.append("\\Z")
        elif pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        else:
            out.append(c)
        i += 1
    return re.compile("".join(out))
