"""The consumers of a config, made and run in one worker.

`Consumers.from_config(cfg, executor, node_id)` makes one consumer per enabled item of
`consumers[]` through its type's module (`app/consumers/<type>.py`, `create_consumer(cfg,
ctx)`, see app/consumers/__init__.py), imported only when an enabled item names that type.
A type this server does not run (`google_pub_sub`, `aws_sqs`, `azure_service_bus`, or a
module missing from this build) is skipped with one error line; a disabled item with one
info line, as Centrifugo logs it. app/web.py starts them after the node and stops them
before it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.config.schema_consumers import UNSUPPORTED_CONSUMER_TYPES, ConsumerConfig
from app.config.section import ConfigError
from app.consumers import Consumer, ConsumerContext
from app.consumers import metrics as consumer_metrics
from app.consumers.dispatch import Dispatcher

if TYPE_CHECKING:
    from app.api.executor import ApiExecutor
    from app.config import Config

__all__ = ["Consumers", "CONSUMER_MODULES"]

log = logging.getLogger("centrifugo.consumers")

# type -> module exporting create_consumer(cfg, ctx).
CONSUMER_MODULES: dict[str, str] = {
    "postgresql": "app.consumers.postgresql",
    "redis_stream": "app.consumers.redis_stream",
    "nats_jetstream": "app.consumers.nats_jetstream",
    "kafka": "app.consumers.kafka",
}

Factory = Callable[[ConsumerConfig, ConsumerContext], Consumer]


def _factory(kind: str) -> Factory | None:
    module_name = CONSUMER_MODULES.get(kind)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise  # the module exists but its client library does not: a broken install
        return None
    factory: Factory = module.create_consumer
    return factory


class Consumers:
    """The running consumers of one worker."""

    def __init__(self, consumers: list[Consumer]) -> None:
        self.consumers = consumers

    @classmethod
    def from_config(cls, cfg: Config, executor: ApiExecutor, node_id: str) -> Consumers:
        ctx = ConsumerContext(dispatcher=Dispatcher(executor), node_id=node_id)
        out: list[Consumer] = []
        for item in cfg.consumers:
            if not item.enabled:
                log.info("consumer %s (%s) is not enabled, skip", item.name, item.type)
                continue
            factory = None if item.type in UNSUPPORTED_CONSUMER_TYPES else _factory(item.type)
            if factory is None:
                log.error("consumer %s: type %s is not supported here, skip", item.name, item.type)
                continue
            try:
                out.append(factory(item, ctx))
            except (ValueError, ConfigError) as e:
                # A setting checkconfig cannot see (a TLS file that does not load, an address
                # that does not parse): this consumer does not run, the worker does.
                log.error("consumer %s: cannot start: %s", item.name, e)
                continue
            consumer_metrics.init(item.name)
        return cls(out)

    async def start(self) -> None:
        started: list[Consumer] = []
        for consumer in self.consumers:
            try:
                await consumer.start()
            except (ValueError, ConfigError) as e:
                log.error("consumer %s: cannot start: %s", consumer.name, e)
                continue
            started.append(consumer)
            log.info("running consumer %s", consumer.name)
        self.consumers = started

    async def stop(self) -> None:
        for consumer in reversed(self.consumers):
            await consumer.stop()
