"""`POST /admin/live`: the samples behind the admin UI's live charts.

One survey over every node (app/membership.py; each node answers with
`NodeControl.live_sample`): node info fields plus the hub's totals of publications fanned out
and deliveries since start. The UI polls it and turns successive totals into rates, so nothing
is kept here between calls. A node of an older version answers nothing and is left out.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from app import metrics
from app.node_control import LIVE_SURVEY

if TYPE_CHECKING:
    from app.node import Node


async def live(node: Node) -> dict[str, Any]:
    with metrics.survey(LIVE_SURVEY):
        answers = await node.membership.survey(LIVE_SURVEY, None)
    nodes = [a for a in answers if isinstance(a, dict)]
    nodes.sort(key=lambda n: (str(n.get("name", "")), str(n.get("uid", ""))))
    return {"time": time.time(), "nodes": nodes}
