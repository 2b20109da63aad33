"""Connection ids: random version-4 UUID strings, never shared between forked workers."""

from __future__ import annotations

import os
import uuid

from app.client.connection import new_client_id


def test_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_client_id() for _ in range(2000)]  # spans several refills of the pool
    assert len(set(ids)) == len(ids)
    for s in ids[:300]:
        u = uuid.UUID(s)
        assert str(u) == s and u.version == 4 and u.variant == uuid.RFC_4122


def test_forked_worker_does_not_repeat_the_parents_ids() -> None:
    new_client_id()  # the parent's pool holds unused bytes now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the ids it would hand out next
        os.write(w, ",".join(new_client_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    child = set(os.read(r, 4096).decode().split(","))
    os.close(r)
    parent = {new_client_id() for _ in range(5)}
    assert len(child) == 5 and not child & parent
