"""A shared poll namespace's options with centrifuge's defaults applied (config.go
SharedPollChannelOptions and the zero-value rules where centrifuge reads them), so the
poller and the connection never repeat a default."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import ChannelOptions

__all__ = ["PollOptions", "poll_options", "MODE_VERSIONED", "MODE_VERSIONLESS"]

MODE_VERSIONED = "versioned"
MODE_VERSIONLESS = "versionless"

DEFAULT_REFRESH_INTERVAL = 10.0  # runRefreshWorker: 0 means 10s
DEFAULT_BATCH_SIZE = 1000  # runRefreshCycle: 0 means 1000
DEFAULT_MAX_KEYS = 5000  # keyed.go defaultMaxTrackedPerConnection
DEFAULT_SHUTDOWN_DELAY = 1.0  # scheduleShutdown: 0 means 1s, negative means at once
DEFAULT_TRACK_EXPIRED_DELAY = 25.0  # client.go: TrackExpiredExtraDelay 0 means 25s
CALL_TIMEOUT = 30.0  # CallTimeout: Centrifugo leaves it 0, so 30s (the proxy's own timeout
# still bounds each call)


@dataclass(frozen=True, slots=True)
class PollOptions:
    proxy_name: str
    refresh_interval: float
    batch_size: int
    max_keys: int
    versionless: bool  # mode "" or "versionless": versions are made here, by content
    shutdown_delay: float  # < 0: at once
    track_expired_delay: float
    publish_enabled: bool


def poll_options(ns: ChannelOptions) -> PollOptions:
    sp = ns.shared_poll
    delay = sp.channel_shutdown_delay
    return PollOptions(
        proxy_name=sp.proxy_name,
        refresh_interval=sp.refresh_interval
        if sp.refresh_interval > 0
        else DEFAULT_REFRESH_INTERVAL,
        batch_size=sp.refresh_batch_size if sp.refresh_batch_size > 0 else DEFAULT_BATCH_SIZE,
        max_keys=sp.max_keys_per_connection if sp.max_keys_per_connection > 0 else DEFAULT_MAX_KEYS,
        versionless=sp.mode in ("", MODE_VERSIONLESS),
        shutdown_delay=DEFAULT_SHUTDOWN_DELAY if delay == 0 else delay,
        track_expired_delay=(
            sp.track_expired_extra_delay
            if sp.track_expired_extra_delay > 0
            else DEFAULT_TRACK_EXPIRED_DELAY
        ),
        publish_enabled=sp.publish_enabled,
    )
