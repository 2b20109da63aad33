"""NATS broker (`broker.type: nats`): PUB/SUB and node-to-node control over NATS, with the
subjects and Push encoding of Centrifugo's NatsBroker, so both can share one NATS. No history;
presence comes from the presence manager (memory per node, or Redis)."""

from __future__ import annotations

from app.engines.nats.broker import NatsBroker

__all__ = ["NatsBroker"]
