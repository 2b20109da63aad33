"""Which engine serves what, decided once: `engine_choice(cfg)` reads the config, `build_engines`
makes the parts Node takes, `uses_memory_engine` answers what the CLI must refuse.

Centrifugo's rule: `engine.type` (memory or redis) picks both the broker and the presence
manager; an enabled `broker` or `presence_manager` section overrides it for its part, with its
own `redis` section. When broker and presence manager are both Redis over the same section
(or two equal ones), the presence manager shares the broker's shards (one set of connections).

The Redis engine is imported only when Redis is chosen, so the memory engine never pulls in
the Redis client; the NATS broker (`broker.type: nats`, broker section only, as Centrifugo's
engine.type knows no nats) likewise only when chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from app.broker import Broker, Controller
from app.config import Config, RedisConfig
from app.maps.broker import MapBroker
from app.presence import PresenceManager

if TYPE_CHECKING:
    from app.engines.memory import MemoryBroker
    from app.engines.nats import NatsBroker
    from app.engines.redis import RedisBroker

MEMORY, REDIS, POSTGRES, NATS = "memory", "redis", "postgres", "nats"


@dataclass(frozen=True)
class EnginePart:
    """What serves one part (broker or presence manager): its engine type, the Redis section
    used when that type is redis, and the config section that chose it (for messages)."""

    type: str
    redis: RedisConfig
    section: Literal["engine", "broker", "presence_manager"]


@dataclass(frozen=True)
class EngineChoice:
    broker: EnginePart
    presence: EnginePart

    def redis_parts(self) -> list[EnginePart]:
        """The parts served by Redis, one per distinct section that chose it."""
        parts: list[EnginePart] = []
        for part in (self.broker, self.presence):
            if part.type == REDIS and all(p.section != part.section for p in parts):
                parts.append(part)
        return parts


@dataclass(frozen=True)
class Engines:
    """The engine parts a Node is built on: Node(cfg, broker, presence, controller)."""

    broker: Broker
    presence: PresenceManager
    # Node-to-node control goes through the broker's engine (both engines' brokers are
    # Controllers, as centrifuge's SetBroker takes one that implements Controller), unless
    # an enabled `controller` section names its own (build_controller).
    controller: Controller
    # Map channels (app/maps/broker.py): `map_broker.type`, memory by default as in
    # Centrifugo, independent of the engine (its own Redis section and PUB/SUB).
    map_broker: MapBroker


def engine_choice(cfg: Config) -> EngineChoice:
    """broker / presence_manager sections, when enabled, override engine.type."""
    broker = cfg.broker
    presence = cfg.presence_manager
    engine = EnginePart(cfg.engine.type, cfg.engine.redis, "engine")
    return EngineChoice(
        broker=EnginePart(broker.type, broker.redis, "broker") if broker.enabled else engine,
        presence=(
            EnginePart(presence.type, presence.redis, "presence_manager")
            if presence.enabled
            else engine
        ),
    )


def uses_memory_engine(cfg: Config) -> bool:
    """Whether some part lives in the process: such a config serves one worker only.

    A memory presence manager beside the NATS or PostgreSQL broker does not count: each worker is a node,
    and Centrifugo's nodes on such a broker with the memory presence manager each keep their
    own presence too (presence and presence_stats answer for the node asked)."""
    choice = engine_choice(cfg)
    if choice.broker.type in (NATS, POSTGRES):
        return False
    return choice.broker.type == MEMORY or choice.presence.type == MEMORY


def uses_memory_map_broker(cfg: Config) -> bool:
    """Whether map channels (a namespace of a map type) would live in the process: such a
    config serves one worker only, like the memory engine (each worker would hold its own
    copy of every map)."""
    if cfg.map_broker.type != MEMORY:
        return False
    spaces = (cfg.channel.without_namespace, *cfg.channel.namespaces)
    return any(ns.is_map for ns in spaces)


def build_engines(cfg: Config) -> Engines:
    """The broker, presence manager and controller `cfg` asks for (not started: Node starts
    them)."""
    from app.engines.memory import MemoryBroker, MemoryPresenceManager

    choice = engine_choice(cfg)
    if choice.broker.type == POSTGRES:
        # Centrifugo's engine.go: the PostgreSQL stream broker (history and fan-out) beside
        # the presence manager the engine or presence_manager section names. It is no
        # Controller, so control messages stay within the node, as centrifuge keeps its
        # memory controller then, unless a `controller` section says where they go.
        from app.engines.postgres import create_postgres_stream_broker

        if choice.presence.type == REDIS:
            from app.engines.redis import create_redis_engine

            pg_presence: PresenceManager = create_redis_engine(choice.presence.redis)[1]
        else:
            pg_presence = MemoryPresenceManager()
        return Engines(
            broker=create_postgres_stream_broker(cfg.broker.postgres),
            presence=pg_presence,
            controller=build_controller(cfg, MemoryBroker()),
            map_broker=build_map_broker(cfg),
        )
    broker: MemoryBroker | RedisBroker | NatsBroker
    presence: PresenceManager
    if choice.broker.type == NATS:
        # Centrifugo's engine.go: the NATS broker (PUB/SUB and control, no history) beside
        # the presence manager the engine or presence_manager section names.
        from app.engines.nats import NatsBroker

        broker = NatsBroker(cfg.broker.nats)
        if choice.presence.type == REDIS:
            from app.engines.redis import create_redis_engine

            presence = create_redis_engine(choice.presence.redis)[1]
        else:
            presence = MemoryPresenceManager()
    elif choice.broker.type == REDIS:
        from app.engines.redis import create_redis_engine

        broker, presence = create_redis_engine(choice.broker.redis)
        presence_redis = choice.presence.redis
        if choice.presence.type != REDIS:
            presence = MemoryPresenceManager()
        elif presence_redis is not choice.broker.redis and presence_redis != choice.broker.redis:
            presence = create_redis_engine(presence_redis)[1]
    else:
        broker = MemoryBroker()
        if choice.presence.type == REDIS:
            from app.engines.redis import create_redis_engine

            presence = create_redis_engine(choice.presence.redis)[1]
        else:
            presence = MemoryPresenceManager()
    return Engines(
        broker=broker,
        presence=presence,
        controller=build_controller(cfg, broker),
        map_broker=build_map_broker(cfg),
    )


def build_controller(cfg: Config, default: Controller) -> Controller:
    """Centrifugo's engine.go: an enabled `controller` section (type postgres, the one its
    open-source server has) carries node-to-node control instead of `default` (the broker,
    or the node-local controller beside a broker that is none)."""
    if not cfg.controller.enabled:
        return default
    from app.engines.postgres import create_postgres_controller

    return create_postgres_controller(cfg.controller.postgres)


def build_map_broker(cfg: Config) -> MapBroker:
    """The map broker `map_broker` asks for."""
    section = cfg.map_broker
    if section.type == REDIS:
        from app.engines.redis import create_redis_map_broker

        return create_redis_map_broker(section.redis, "map_broker.redis")
    if section.type == POSTGRES:
        from app.engines.postgres import create_postgres_map_broker
        from app.maps.resolve import map_options_of

        return create_postgres_map_broker(section.postgres, map_options_of(cfg))
    from app.maps.memory import MemoryMapBroker

    return MemoryMapBroker()
