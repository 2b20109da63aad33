r"""Go regular expressions (`channel_regex`, the token `audience_regex`/`issuer_regex`) on RE2.

Centrifugo compiles these with Go's `regexp`, an RE2 engine: matching takes time linear in
the text, whatever the pattern. Python's `re` backtracks: `^(a+)+$` against a 24-character
channel took 0.5 s of CPU and each 2 more characters 4 times that, so one subscribe could
hold a worker. google-re2 binds C++ RE2, the engine Go's follows (same author, same syntax
in Perl mode, leftmost-first matching, `$` only at the end of the text without `(?m)`,
ASCII-only `\w \d \s \b` and `[[:alpha:]]`, Unicode `\pL`, flags `i m s U`, no
backreferences or lookarounds). `python -m bench.regex` measures it: `^(a+)+$` takes 1.3 µs
at 24 characters and 23 µs at 10,000 (re: 0.4 s at 24); for ordinary patterns on short
channels re is faster (0.3 µs against RE2's 1.3 µs, mostly the binding's per-call cost),
which ChannelResolver's cache of resolved channels absorbs.

Where C++ RE2 accepts what Go refuses, we refuse too, so a config means the same here:
- `\C` (one byte, even inside a UTF-8 character): "invalid escape sequence" in Go;
- capture group names: Go takes `[A-Za-z0-9_]+` only, C++ RE2 also Unicode letters.
Lone surrogates in the pattern are Go's "invalid UTF-8". Known remaining differences: Go
refuses nesting deeper than 1,000 (RE2 takes more); Unicode tables follow each engine's
Unicode version; with a duplicated group name, Go's token variables take the last group,
ours the first.

Memory: each compiled regex has an RE2 budget (`max_mem`) for its program and its lazily
built DFA cache; real use is what the pattern needs (KBs for `^[a-z0-9_-]+$`). 8 MiB (RE2's
default) fits ordinary patterns; a pattern whose program doesn't fit (RE2 compiles to a
UTF-8 byte automaton, so `\pL{1000}` is about 1.2 M instructions where Go's rune program
has 1,000) is given 64 MiB, and beyond that refused at config load as "pattern too large".
When a DFA cache fills, RE2 resets it or falls back to its NFA: still linear, never backtracking.
"""

from __future__ import annotations

import re

import re2

# The budgets tried in turn; see the module docstring.
_MAX_MEM = (8 << 20, 64 << 20)
_CAPTURE_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


class GoRegexError(re.error):
    """A pattern Go's regexp.Compile would refuse (or RE2 cannot hold)."""


class GoRegexp:
    """A Go regexp for yes/no matching, as Go's MatchString (an unanchored search).

    Compiled without capture groups: RE2 then answers from its DFA alone, 25 times faster
    than with groups (`^(a+)+$` on 10,000 characters: 24 µs instead of 590 µs)."""

    __slots__ = ("_re", "pattern")

    def __init__(self, pattern: str, compiled: re2._Regexp) -> None:
        self.pattern = pattern
        self._re = compiled

    def matches(self, text: str) -> bool:
        """Does the pattern match anywhere in `text`?"""
        return self._re.search(_utf8(text)) is not None


class GoSubmatchRegexp:
    """A Go regexp whose named groups are read, as Go's FindStringSubmatch + SubexpNames."""

    __slots__ = ("_re", "pattern")

    def __init__(self, pattern: str, compiled: re2._Regexp) -> None:
        self.pattern = pattern
        self._re = compiled

    def named_groups(self, text: str) -> dict[str, str] | None:
        """None without a match, else each named group's text ("" for a group that took
        no part, as in Go)."""
        m = self._re.search(_utf8(text))
        if m is None:
            return None
        return {
            name: (m.group(index) or b"").decode("utf-8", "replace")
            for name, index in self._re.groupindex.items()
        }


def _utf8(text: str) -> bytes:
    # Channel names and claims are valid UTF-8 once decoded, but a lone surrogate must not
    # raise here: RE2 reads its three bytes as one character that is in no Unicode class.
    return text.encode("utf-8", "surrogatepass")


def _byte_escape_at(pattern: str) -> int:
    r"""Index of a `\C` escape (outside `\Q...\E`), or -1."""
    i, n = 0, len(pattern)
    while i < n - 1:
        if pattern[i] != "\\":
            i += 1
            continue
        nxt = pattern[i + 1]
        if nxt == "C":
            return i
        if nxt == "Q":  # literal text up to the next \E, as in Go
            end = pattern.find("\\E", i + 2)
            if end < 0:
                return -1
            i = end + 2
            continue
        i += 2
    return -1


def compile_go_regexp(pattern: str) -> GoRegexp:
    """Compile `pattern` as Go's `regexp.Compile` would, for `matches`; raises GoRegexError
    (an re.error, so config validation reports it as a bad pattern) for what Go or RE2
    refuses."""
    return GoRegexp(pattern, _compile(pattern, captures=False))


def compile_go_submatch_regexp(pattern: str) -> GoSubmatchRegexp:
    """As compile_go_regexp, for reading named groups."""
    return GoSubmatchRegexp(pattern, _compile(pattern, captures=True))


def _compile(pattern: str, *, captures: bool) -> re2._Regexp:
    try:
        pattern.encode("utf-8")
    except UnicodeEncodeError:
        raise GoRegexError("invalid UTF-8") from None
    if _byte_escape_at(pattern) >= 0:
        raise GoRegexError("invalid escape sequence: \\C")
    compiled = None
    for max_mem in _MAX_MEM:
        options = re2.Options()
        options.max_mem = max_mem
        options.longest_match = False  # leftmost-first, as Go (not POSIX leftmost-longest)
        options.log_errors = False  # the caller reports the error once, naming the pattern
        options.encoding = re2.Options.Encoding.UTF8
        options.never_capture = not captures
        try:
            compiled = re2.compile(pattern, options)
            break
        except re2.error as e:
            message = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
            if "pattern too large" not in message or max_mem == _MAX_MEM[-1]:
                raise GoRegexError(message) from None
    # Some re2 bindings hand unsupported syntax to Python's backtracking `re`; that would
    # bring back the very cost this module exists to remove.
    if compiled is None or isinstance(compiled, re.Pattern):
        raise GoRegexError("not compiled by RE2")
    # RE2 reports the names even with never_capture.
    for name in compiled.groupindex:
        if not _CAPTURE_NAME.match(name):
            raise GoRegexError(f"invalid named capture: (?P<{name}>")
    return compiled


# The name config validation and channel resolution call it by.
compile_channel_regex = compile_go_regexp
