"""Pure recovery decisions (research §5), kept apart from I/O so they are unit-tested."""

from __future__ import annotations

from app.models import Publication, StreamPosition


def stream_recovered(pubs: list[Publication], top: StreamPosition, offset: int, epoch: str) -> bool:
    """Did a `since` read give the client everything after (offset, epoch)?

    True when the epoch matches (an empty client epoch matches any) and either
    nothing was missed (top == offset) or the publications run without a hole
    from offset+1 up to the top. A read cut by the recovery limit ends below the
    top and so is not a recovery.
    """
    if epoch and epoch != top.epoch:
        return False
    if not pubs:
        return top.offset == offset
    return pubs[0].offset == offset + 1 and pubs[-1].offset == top.offset


def cache_recovered(
    latest: list[Publication], top: StreamPosition, offset: int, epoch: str
) -> tuple[bool, list[Publication]]:
    """Cache mode: hand over the latest publication unless the client already has it."""
    if offset > 0 and offset == top.offset and epoch == top.epoch:
        return True, []
    if latest:
        return True, latest[:1]
    return False, []
