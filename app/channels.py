"""Channel name parsing: private prefix, namespace, user-limited part, validation.

Rules (Centrifugo v6, research §4.1):

- the namespace is the part before the FIRST `namespace_boundary` once the
  `private_prefix` is stripped; the namespace stays part of the channel string;
  no boundary means `channel.without_namespace` options; an unknown namespace is
  error 102;
- an empty channel is error 107 (callers that must disconnect with 3501 check
  for "" themselves);
- client-side only, as in Centrifugo (server API and server-side subscriptions
  skip these): longer than `channel.max_length` bytes ⇒ 107; then, when the
  namespace has a `channel_regex`, the part after `ns:` (the whole channel when
  there is no namespace) must match it, otherwise the channel must be ASCII ⇒ 107;
- with `allow_user_limited_channels`, a channel containing `user_boundary` lists
  the users allowed to subscribe after its LAST boundary, split by
  `user_separator` (`dialog#42,43`).

Resolution runs for every command that names a channel, so results are cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.errors import ERROR_BAD_REQUEST, ERROR_UNKNOWN_CHANNEL, ClientError
from app.goregex import GoRegexp, compile_channel_regex

if TYPE_CHECKING:
    from app.config import ChannelOptions, Config

DEFAULT_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    channel: str
    namespace: str  # "" for channels without a namespace
    options: ChannelOptions
    private: bool
    # Users after the last user boundary when the namespace allows user-limited
    # channels and the channel has the boundary; None otherwise.
    allowed_users: tuple[str, ...] | None

    @property
    def user_limited(self) -> bool:
        return self.allowed_users is not None

    def user_allowed(self, user: str) -> bool:
        """True when the channel is user-limited and lists `user`."""
        return self.allowed_users is not None and user in self.allowed_users


class ChannelResolver:
    """Resolves channel names against one Config; cheap to call repeatedly."""

    def __init__(self, cfg: Config, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._cfg = cfg
        ch = cfg.channel
        self._private_prefix: str = ch.private_prefix
        self._ns_boundary: str = ch.namespace_boundary
        self._user_boundary: str = ch.user_boundary
        self._user_separator: str = ch.user_separator
        self._max_length: int = ch.max_length
        self._without_namespace: ChannelOptions = ch.without_namespace
        self._namespaces: dict[str, ChannelOptions] = {ns.name: ns for ns in ch.namespaces}
        # Compiled once: a bad pattern fails at startup, not on a client's command.
        # Centrifugo uses Go's regexp MatchString, an unanchored search, so we
        # search too (RE2, linear time: app/goregex.py); anchor the pattern (^...$)
        # to require a full match.
        self._regexes: dict[str, GoRegexp] = {}
        if self._without_namespace.channel_regex:
            self._regexes[""] = compile_channel_regex(self._without_namespace.channel_regex)
        for name, opts in self._namespaces.items():
            if opts.channel_regex:
                self._regexes[name] = compile_channel_regex(opts.channel_regex)
        self._cache_size = cache_size
        # (channel, client_side) -> ChannelInfo, or the error code it raised.
        self._cache: dict[tuple[str, bool], ChannelInfo | int] = {}

    @property
    def config(self) -> Config:
        return self._cfg

    def resolve(self, channel: str, *, client_side: bool = True) -> ChannelInfo:
        """Parse `channel` and find its options; raises ClientError 102 or 107."""
        if not channel:
            raise ClientError(ERROR_BAD_REQUEST)
        key = (channel, client_side)
        hit = self._cache.get(key)
        if hit is None:
            try:
                hit = self._resolve(channel, client_side)
            except ClientError as e:
                hit = e.code
            if len(self._cache) >= self._cache_size:
                # Clearing beats LRU bookkeeping on the hot path; hot channels refill at once.
                self._cache.clear()
            self._cache[key] = hit
        if isinstance(hit, int):
            raise ClientError(hit)
        return hit

    def _resolve(self, channel: str, client_side: bool) -> ChannelInfo:
        if client_side and self._max_length > 0:
            # Go's len() counts bytes; for ASCII names that is the character count.
            size = len(channel) if channel.isascii() else len(channel.encode())
            if size > self._max_length:
                raise ClientError(ERROR_BAD_REQUEST)

        prefix = self._private_prefix
        private = bool(prefix) and channel.startswith(prefix)
        trimmed = channel[len(prefix) :] if private else channel
        boundary = self._ns_boundary
        if boundary and boundary in trimmed:
            namespace, rest = trimmed.split(boundary, 1)
        else:
            namespace, rest = "", channel
        # ":chan" has an empty namespace name and so uses without_namespace, as upstream.
        if namespace:
            options = self._namespaces.get(namespace)
            if options is None:
                raise ClientError(ERROR_UNKNOWN_CHANNEL)
        else:
            options = self._without_namespace

        if client_side:
            regex = self._regexes.get(namespace)
            if regex is not None:
                if not regex.matches(rest):
                    raise ClientError(ERROR_BAD_REQUEST)
            elif not channel.isascii():
                raise ClientError(ERROR_BAD_REQUEST)

        allowed_users: tuple[str, ...] | None = None
        ub = self._user_boundary
        if options.allow_user_limited_channels and ub and ub in channel:
            users_part = channel.rsplit(ub, 1)[1]
            sep = self._user_separator
            users = users_part.split(sep) if sep else [users_part]
            # An empty name would let anonymous connections into "chan#" or "chan#a,".
            allowed_users = tuple(u for u in users if u)

        return ChannelInfo(
            channel=channel,
            namespace=namespace,
            options=options,
            private=private,
            allowed_users=allowed_users,
        )

    def personal_channel(self, user: str) -> str:
        """`#user`, or `ns:#user` with client.subscribe_to_user_personal_channel's namespace."""
        ns = self._cfg.client.subscribe_to_user_personal_channel.personal_channel_namespace
        channel = self._user_boundary + user
        if ns:
            return ns + self._ns_boundary + channel
        return channel
