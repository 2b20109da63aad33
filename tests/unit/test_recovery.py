"""Recovery decisions of research §5."""

from app.models import Publication, StreamPosition
from app.recovery import cache_recovered, stream_recovered


def pubs(*offsets: int) -> list[Publication]:
    return [Publication(data=b"1", offset=o) for o in offsets]


def test_nothing_missed_is_recovered():
    assert stream_recovered([], StreamPosition(5, "e"), 5, "e")


def test_missed_publications_without_hole_are_recovered():
    assert stream_recovered(pubs(6, 7, 8), StreamPosition(8, "e"), 5, "e")


def test_hole_at_start_is_not_recovered():
    # Publication 6 expired from history: the client would miss it.
    assert not stream_recovered(pubs(7, 8), StreamPosition(8, "e"), 5, "e")


def test_limit_cut_is_not_recovered():
    assert not stream_recovered(pubs(6, 7), StreamPosition(9, "e"), 5, "e")


def test_epoch_change_is_not_recovered():
    assert not stream_recovered(pubs(6), StreamPosition(6, "new"), 5, "old")


def test_empty_client_epoch_matches():
    assert stream_recovered(pubs(1, 2), StreamPosition(2, "e"), 0, "")


def test_history_gone_below_client_offset_not_recovered():
    assert not stream_recovered([], StreamPosition(3, "e"), 5, "e")


def test_cache_returns_latest_unless_client_has_it():
    assert cache_recovered(pubs(9), StreamPosition(9, "e"), 9, "e") == (True, [])
    ok, got = cache_recovered(pubs(9), StreamPosition(9, "e"), 0, "")
    assert ok and [p.offset for p in got] == [9]


def test_cache_empty_channel():
    assert cache_recovered([], StreamPosition(0, "e"), 0, "") == (False, [])
    assert cache_recovered([], StreamPosition(0, "e"), 0, "e") == (False, [])
    assert cache_recovered([], StreamPosition(0, "e"), 4, "old") == (False, [])
