"""How map sync pages look on the wire (app/client/mapping.py): page sizes, and the JSON
form and per-key delta chains of a delta subscription's state and stream pages."""

from __future__ import annotations

from app import fossil
from app.config import ChannelOptions
from app.hub import json_string
from app.models import Publication

# centrifuge's defaultMap{,Min,Max}PageSize.
DEFAULT_PAGE_SIZE = 100
MIN_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int, ns: ChannelOptions) -> int:
    """centrifuge's getMapPageSize: the request's limit clamped to the namespace's
    bounds (defaults 100, 100, 1000)."""
    m = ns.map
    limit = requested if requested > 0 else (m.default_page_size or DEFAULT_PAGE_SIZE)
    return min(max(limit, m.min_page_size or MIN_PAGE_SIZE), m.max_page_size or MAX_PAGE_SIZE)


def as_json_strings(pubs: list[Publication]) -> list[Publication]:
    """centrifuge's escapeStateForDelta: a delta subscription over JSON gets each data as
    a JSON string, the form its live publications take, so the SDK keeps exact bytes."""
    out = []
    for p in pubs:
        text = json_string(p.data) if p.data else None
        out.append(p if text is None else _with_data(p, text, p.delta))
    return out


def _with_data(p: Publication, data: bytes, delta: bool) -> Publication:
    return Publication(data, p.info, p.offset, p.tags, p.time, delta, key=p.key, removed=p.removed)


def delta_chains(pubs: list[Publication], as_json: bool) -> list[Publication]:
    """centrifuge's makeRecoveredMapPubsDeltaFossil: per key, the first publication in
    full and each next one a patch against the one before when the patch is smaller."""
    last: dict[str, bytes] = {}
    out = []
    for p in pubs:
        prev = last.get(p.key)
        patch = None if prev is None or p.removed else fossil.worth_sending(prev, p.data)
        data = p.data if patch is None else patch
        if p.removed:
            last.pop(p.key, None)
        else:
            last[p.key] = p.data
        if as_json and data:
            data = json_string(data) or data
        out.append(_with_data(p, data, patch is not None))
    return out
