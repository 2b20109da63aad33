"""NATS subject names, exactly as Centrifugo's NatsBroker builds them.

- control (to every node): `<prefix>.control`
- one node: `<prefix>.node.<node id>`
- a channel: `<prefix>.client.<channel>`; in raw mode `<raw_mode.prefix><channel>` with
  `raw_mode.channel_replacements` applied to the channel first.

Centrifugo applies the replacements with Go's strings.NewReplacer: one pass left to right, at
each position the first pair (in argument order) whose key matches there, replaced text never
rescanned. A regex alternation of the keys in config order does the same; Go's order is a map's
(random), so only configs whose keys overlap could tell the two apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping


def has_wildcard(channel: str) -> bool:
    """Centrifugo's check for a wildcard channel (any `*` or `>` anywhere in the name)."""
    return "*" in channel or ">" in channel


class Subjects:
    """The subject of each destination for one `broker.nats` section."""

    __slots__ = ("control", "client_prefix", "raw", "raw_prefix", "_node_prefix", "_replace")

    def __init__(
        self,
        prefix: str,
        raw: bool = False,
        raw_prefix: str = "",
        replacements: Mapping[str, str] | None = None,
    ) -> None:
        self.control = prefix + ".control"
        self.client_prefix = prefix + ".client."
        self._node_prefix = prefix + ".node."
        self.raw = raw
        self.raw_prefix = raw_prefix
        self._replace: Callable[[str], str] | None = None
        pairs = {k: v for k, v in (replacements or {}).items() if k}
        if raw and pairs:
            pattern = re.compile("|".join(re.escape(k) for k in pairs))

            def replace(channel: str) -> str:
                return pattern.sub(lambda m: pairs[m.group(0)], channel)

            self._replace = replace

    def node(self, node_id: str) -> str:
        return self._node_prefix + node_id

    def client(self, channel: str) -> str:
        if self.raw:
            if self._replace is not None:
                channel = self._replace(channel)
            return self.raw_prefix + channel
        return self.client_prefix + channel
