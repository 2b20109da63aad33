"""How a publication to a channel is stored (its namespace's history settings, unless the
caller skips history) and the count of the ones the broker dropped: the node's publish,
publish_many and batch paths share them."""

from __future__ import annotations

from app import metrics
from app.channels import ChannelInfo
from app.models import ClientInfo, PublishOptions, PublishResult


def publish_options(
    chinfo: ChannelInfo,
    info: ClientInfo | None,
    tags: dict[str, str] | None,
    skip_history: bool,
    idempotency_key: str,
    delta: bool,
    version: int = 0,
    version_epoch: str = "",
) -> PublishOptions:
    """How a publication to this channel is stored: its namespace's history settings
    unless the caller skips history."""
    ns = chinfo.options
    opts = PublishOptions(
        client_info=info,
        tags=tags or None,
        idempotency_key=idempotency_key,
        delta=delta or ns.delta_publish,
        version=version,
        version_epoch=version_epoch,
    )
    if ns.history_enabled and not skip_history:
        opts.history_size = ns.history_size
        opts.history_ttl = ns.history_ttl
        opts.history_meta_ttl = ns.history_meta_ttl
    return opts


def count_suppressed(result: PublishResult, namespace: str) -> None:
    """centrifuge's incBrokerPublishSuppressed: a publication the broker dropped."""
    metrics.child(metrics.PUBLISH_SUPPRESSED, result.suppress_reason, namespace).inc()
