"""Asynchronous consumers (Centrifugo's internal/consuming): server API commands, or
publication data, taken from a queue and run exactly as the HTTP API runs them.

This module is the contract every consumer type implements; app/consumers/build.py makes the
consumers of a config and runs them in a worker (app/web.py). A consumer type lives in
`app/consumers/<type>.py` (the `type` value of its config item: `postgresql`,
`redis_stream`, `nats_jetstream`, `kafka`) and exports

    def create_consumer(cfg: ConsumerConfig, ctx: ConsumerContext) -> Consumer

which only builds the object (no I/O); `build.py` imports that module when an enabled item
names its type, so a client library loads only where it is used.

What a consumer must guarantee (the same for every type):

- **Dispatch.** Each message goes through `ctx.dispatcher` (app/consumers/dispatch.py):
  `dispatch_command(method, payload)` for command messages (`method` empty means the payload
  is `{"method": ..., "payload": ...}`), `dispatch_publication(channels, pub)` in
  publication data mode. Decoding, errors and result codes are the HTTP API's; a command
  that fails for a reason retrying cannot fix (bad request, unknown channel, ...) is logged
  once and counts as done, as in Centrifugo.
- **At least once, once per delivery.** `Retry` (an internal error, code 100: the engine is
  down, say) means "not done": the consumer must not acknowledge the message, and retries
  it with `app/consumers/backoff.py`'s `Backoff` (Centrifugo's 10 ms .. 5 s with jitter)
  until it is done or the consumer stops. A message is acknowledged (row deleted, XACK,
  ack, offset commit) only after its dispatch returned, and a dispatch that returned is
  never run again for the same delivery. A crash between the two redelivers it: publishers
  that must not publish twice set `idempotency_key` on publish/broadcast: the broker
  answers a repeat within 5 minutes (centrifuge's idempotent result TTL) with the first
  result and publishes nothing.
- **Order.** Messages of one partition (outbox partition, stream with `num_workers: 1`,
  Kafka partition, JetStream consumer) are dispatched one after another; a failing one
  blocks those behind it rather than being overtaken.
- **One worker per partition.** Every gunicorn worker is a node and runs every enabled
  consumer; the backend's own coordination decides who consumes what: PostgreSQL advisory
  locks per partition, Redis consumer groups (consumer name = the worker's node id),
  Kafka group membership, a JetStream durable consumer shared by all workers.
- **Survive the backend.** `start()` never fails because the backend is unreachable: the
  consumer connects in the background and reconnects with backoff, logging one line per
  failure and counting it in `centrifugo_consumers_errors_total`.
- **Metrics.** `app/consumers/metrics.py`: `processed(name, n)` after messages are done,
  `error(name)` per failure, under Centrifugo's names.
- **Stop.** `stop()` lets the message being dispatched finish and be acknowledged
  (`ConsumerTasks.critical()` in app/consumers/tasks.py marks dispatch-to-ack), then
  cancels the rest and closes connections. It is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.consumers.dispatch import Dispatcher

__all__ = ["Consumer", "ConsumerContext"]


class Consumer(Protocol):
    """One configured consumer running in one worker."""

    @property
    def name(self) -> str:
        """The config item's `name` (metrics label `consumer_name`, log field)."""
        ...

    async def start(self) -> None:
        """Begin consuming in background tasks and return at once; never raises because the
        backend is unreachable (the tasks connect and retry by themselves)."""
        ...

    async def stop(self) -> None:
        """Stop consuming: the message being dispatched finishes and is acknowledged, nothing
        new starts, connections close. Safe to call twice or before `start()`."""
        ...


@dataclass(frozen=True, slots=True)
class ConsumerContext:
    """What a consumer gets from the worker that runs it."""

    dispatcher: Dispatcher
    # The worker's node id: unique per worker process, new on every start (the Redis stream
    # consumer name, as Centrifugo names it).
    node_id: str
