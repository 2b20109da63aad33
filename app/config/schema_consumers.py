"""The `consumers[]` sections of the config schema: asynchronous consumers that take server API
commands from a queue (Centrifugo's internal/configtypes `Consumer`, `Consumers` and the
per-type `*ConsumerConfig` classes). Re-exported by app/config/schema.py; see it for what a
schema class is and how field docstrings become `centrifugo configdoc`.

Key names and defaults are Centrifugo v6.9's. A consumer item carries every type's section,
as Centrifugo's does; only the one named by `type` is read. `google_pub_sub`, `aws_sqs` and
`azure_service_bus` are opaque maps here: those consumers are not implemented (no such server
runs on this project's machines) and app/config/support.py reports them. The consumers
themselves live in app/consumers/.

`CENTRIFUGO_CONSUMERS` takes a JSON array of items or space-separated item names (Centrifugo's
`Consumers.Decode`), and `CENTRIFUGO_CONSUMERS_<NAME>_<OPTION>` sets one option of the named
item (`CENTRIFUGO_CONSUMERS_OUTBOX_POSTGRESQL_DSN`): the loader does both for every list of
sections whose items have a `name`.
"""

from dataclasses import dataclass
from typing import Any

from app.config.schema_parts import EnabledConfig, TLSConfig
from app.config.section import Duration, Section, empty_map, subsection

__all__ = [
    "CONSUMER_TYPES",
    "UNSUPPORTED_CONSUMER_TYPES",
    "PostgresConsumerConfig",
    "KafkaPublicationDataModeConfig",
    "KafkaConsumerConfig",
    "NatsJetStreamPublicationDataModeConfig",
    "NatsJetStreamConsumerConfig",
    "RedisStreamPublicationDataModeConfig",
    "RedisStreamConsumerConfig",
    "ConsumerConfig",
    "consumer_problem",
]

# Centrifugo's KnownConsumerTypes, in its order.
CONSUMER_TYPES = (
    "postgresql",
    "kafka",
    "nats_jetstream",
    "google_pub_sub",
    "aws_sqs",
    "azure_service_bus",
    "redis_stream",
)
# Known to the schema, not run by this server (reported by app/config/support.py).
UNSUPPORTED_CONSUMER_TYPES = ("google_pub_sub", "aws_sqs", "azure_service_bus")


@dataclass(frozen=True, slots=True)
class PostgresConsumerConfig(Section):
    """``consumers[].postgresql``: the transactional outbox table consumer."""

    dsn: str = ""
    """Connection string of the database holding the outbox table, e.g.
    `postgres://user:pass@localhost:5432/db`. Required."""
    outbox_table_name: str = ""
    """Outbox table to read: columns `id` (bigserial), `method` (text), `payload` (JSON) and
    `partition` (bigint). Required."""
    num_partitions: int = 1
    """How many partitions the table is split into; each is read in `id` order by one consumer
    at a time (an advisory lock per partition), partitions in parallel. `0` means `1`."""
    partition_select_limit: int = 100
    """Most rows read from one partition in one transaction. `0` means `100`."""
    partition_poll_interval: Duration = Duration(0.3)
    """How long a partition that had fewer rows than the limit waits before it is read again
    (a notification on `partition_notification_channel` cuts the wait short). `0` means
    `300ms`."""
    partition_notification_channel: str = ""
    """Channel to `LISTEN` on for wake-ups: a `NOTIFY` whose payload is a partition number makes
    that partition be read at once. Empty: polling only."""
    partition_notification_dsn: str = ""
    """Connection string for the `LISTEN` connection alone, when it must differ from `dsn` (a
    direct database address when `dsn` points at PgBouncer in transaction pooling mode, which
    cannot carry `LISTEN`). Empty uses `dsn`."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for the connections to PostgreSQL, as an alternative to TLS parameters in the DSN."""
    use_try_lock: bool = False
    """Take the partition lock with `pg_try_advisory_xact_lock` (skip the partition while
    another consumer holds it) instead of waiting on `pg_advisory_xact_lock`."""


@dataclass(frozen=True, slots=True)
class KafkaPublicationDataModeConfig(Section):
    """``consumers[].kafka.publication_data_mode``: messages that carry publication data, with
    the rest of the publication in message headers."""

    enabled: bool = False
    """Treat each message's payload as data to publish (not as an API command); the channels
    and the other publication fields come from the headers below."""
    channels_header: str = "centrifugo-channels"
    """Header holding the comma-separated channels to publish into (one channel: a publish,
    several: a broadcast)."""
    idempotency_key_header: str = "centrifugo-idempotency-key"
    """Header holding the publication's idempotency key."""
    delta_header: str = "centrifugo-delta"
    """Header holding `true` when the publication may be sent as a delta."""
    version_header: str = "centrifugo-version"
    """Header holding the publication's version (an unsigned integer)."""
    version_epoch_header: str = "centrifugo-version-epoch"
    """Header holding the epoch of the publication's version."""
    tags_header_prefix: str = "centrifugo-tag-"
    """Prefix of headers that become publication tags (the rest of the header name is the tag
    key)."""


@dataclass(frozen=True, slots=True)
class KafkaConsumerConfig(Section):
    """``consumers[].kafka``: a Kafka consumer group member."""

    brokers: tuple[str, ...] = ()
    """Seed broker addresses, e.g. `["localhost:9092"]`. Required."""
    topics: tuple[str, ...] = ()
    """Topics to consume. Required."""
    consumer_group: str = ""
    """Consumer group the workers join; the group splits partitions between them. Required."""
    max_poll_records: int = 100
    """Most records taken in one poll."""
    fetch_max_bytes: int = 0
    """Most bytes fetched in one request; `0` uses the client's default (50 MB)."""
    fetch_max_wait: Duration = Duration(0.5)
    """Longest wait for records in one fetch."""
    fetch_read_uncommitted: bool = False
    """Read records of transactions not yet committed (by default only committed ones)."""
    partition_queue_max_size: int = 1000
    """Records waiting in one partition's queue before that partition is paused; `-1` pauses on
    every poll."""
    dial_timeout: Duration = Duration(3.0)
    """Timeout of the TCP connection to one broker."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for the connections to Kafka."""
    sasl_mechanism: str = ""
    """SASL mechanism: `plain`, `scram-sha-256`, `scram-sha-512` or `aws-msk-iam`; empty turns
    SASL off."""
    sasl_user: str = ""
    """SASL user name."""
    sasl_password: str = ""
    """SASL password."""
    assume_role_arn: str = ""
    """AWS role to assume for `aws-msk-iam` authentication; then `sasl_user` and `sasl_password`
    are not used."""
    instance_id: str = ""
    """Stable group instance id (static membership: a restarted member takes its partitions
    back without a rebalance). Empty: dynamic membership."""
    method_header: str = "centrifugo-method"
    """Header holding the API method; when a message has it, the payload is that method's
    request alone (otherwise `{"method", "payload"}`)."""
    publication_data_mode: KafkaPublicationDataModeConfig = subsection(
        KafkaPublicationDataModeConfig
    )
    """Messages carrying publication data instead of API commands."""


@dataclass(frozen=True, slots=True)
class NatsJetStreamPublicationDataModeConfig(KafkaPublicationDataModeConfig):
    """``consumers[].nats_jetstream.publication_data_mode``: the same headers as Kafka's, read
    from NATS message headers."""


@dataclass(frozen=True, slots=True)
class NatsJetStreamConsumerConfig(Section):
    """``consumers[].nats_jetstream``: a durable JetStream pull consumer."""

    url: str = "nats://127.0.0.1:4222"
    """Address of the NATS server."""
    credentials_file: str = ""
    """NATS credentials file; when set it is used instead of user/password and token."""
    username: str = ""
    """User name for NATS authentication (without `credentials_file`)."""
    password: str = ""
    """Password for NATS authentication."""
    token: str = ""
    """Token for NATS authentication (without `credentials_file` and `username`)."""
    stream_name: str = ""
    """JetStream stream to consume. Required."""
    use_existing_consumer: bool = False
    """Attach to a durable consumer that already exists instead of creating it; then
    `deliver_policy`, `subjects` and `max_ack_pending` are not used, and start fails if it is
    missing."""
    subjects: tuple[str, ...] = ()
    """Subjects of the stream the consumer takes (its filter)."""
    durable_consumer_name: str = ""
    """Name of the durable consumer, shared by every worker so each message goes to one.
    Required."""
    deliver_policy: str = "new"
    """Where a new consumer starts: `new` (messages from now on) or `all` (the whole stream)."""
    max_ack_pending: int = 100
    """Most messages delivered and not yet acknowledged."""
    method_header: str = "centrifugo-method"
    """Header holding the API method; when a message has it, the payload is that method's
    request alone (otherwise `{"method", "payload"}`)."""
    publication_data_mode: NatsJetStreamPublicationDataModeConfig = subsection(
        NatsJetStreamPublicationDataModeConfig
    )
    """Messages carrying publication data instead of API commands."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for the connection to NATS."""


@dataclass(frozen=True, slots=True)
class RedisStreamPublicationDataModeConfig(Section):
    """``consumers[].redis_stream.publication_data_mode``: stream entries that carry
    publication data, with the rest of the publication in other fields of the entry."""

    enabled: bool = False
    """Treat the `payload_value` field as data to publish (not as an API command); channels
    and the other publication fields come from the fields below."""
    channels_value: str = "centrifugo-channels"
    """Field holding the comma-separated channels to publish into (one channel: a publish,
    several: a broadcast)."""
    idempotency_key_value: str = "centrifugo-idempotency-key"
    """Field holding the publication's idempotency key."""
    delta_value: str = "centrifugo-delta"
    """Field holding `true` when the publication may be sent as a delta."""
    version_value: str = "centrifugo-version"
    """Field holding the publication's version (an unsigned integer)."""
    version_epoch_value: str = "centrifugo-version-epoch"
    """Field holding the epoch of the publication's version."""
    tags_value_prefix: str = "centrifugo-tag-"
    """Prefix of fields that become publication tags (the rest of the field name is the tag
    key)."""


@dataclass(frozen=True, slots=True)
class RedisStreamConsumerConfig(Section):
    """``consumers[].redis_stream``: a member of a Redis stream consumer group. The connection
    keys are those of Centrifugo's `Redis` block (one Redis: the first address is used)."""

    address: tuple[str, ...] = ("redis://127.0.0.1:6379",)
    """Redis to read the streams from (`redis://[user:password@]host:6379/0`, `rediss://`,
    `unix://`); one address."""
    connect_timeout: Duration = Duration(1.0)
    """How long to wait for a connection to Redis."""
    io_timeout: Duration = Duration(4.0)
    """How long one Redis command may take (the blocking stream read waits on top of it)."""
    db: int = 0
    """Redis database to select."""
    user: str = ""
    """User name for Redis ACL authentication."""
    password: str = ""
    """Password for Redis authentication."""
    client_name: str = ""
    """Name set with `CLIENT SETNAME` on the connections; empty sets none."""
    force_resp2: bool = False
    """Make Centrifugo's client speak RESP2. This server always speaks RESP2: no effect."""
    cluster_address: tuple[str, ...] = ()
    """Redis Cluster seeds. Not implemented for consumers here."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for the connections to Redis (a `rediss://` address turns it on too)."""
    sentinel_address: tuple[str, ...] = ()
    """Redis Sentinels. Not implemented for consumers here."""
    sentinel_user: str = ""
    """User name for the Sentinels. Not implemented for consumers here."""
    sentinel_password: str = ""
    """Password for the Sentinels. Not implemented for consumers here."""
    sentinel_master_name: str = ""
    """Master name watched by the Sentinels. Not implemented for consumers here."""
    sentinel_client_name: str = ""
    """Client name on Sentinel connections. Not implemented for consumers here."""
    sentinel_tls: TLSConfig = subsection(TLSConfig)
    """TLS for the Sentinel connections. Not implemented for consumers here."""
    replica_client: EnabledConfig = subsection(EnabledConfig)
    """Read from replicas. Not used by consumers (they read and acknowledge on the master)."""
    streams: tuple[str, ...] = ()
    """Stream keys to consume. Required."""
    consumer_group: str = ""
    """Consumer group every worker joins (created at the end of the stream when missing), so
    each entry goes to one worker. Required."""
    visibility_timeout: Duration = Duration(30.0)
    """How long an entry may stay delivered and unacknowledged (its consumer died, say) before
    another worker claims it and processes it again."""
    num_workers: int = 1
    """Entries of one stream processed at the same time by a worker; above `1` their order is
    no longer kept."""
    payload_value: str = "payload"
    """Field of a stream entry holding the payload."""
    method_value: str = "method"
    """Field holding the API method; when an entry has it, the payload is that method's request
    alone (otherwise `{"method", "payload"}`)."""
    publication_data_mode: RedisStreamPublicationDataModeConfig = subsection(
        RedisStreamPublicationDataModeConfig
    )
    """Entries carrying publication data instead of API commands."""


@dataclass(frozen=True, slots=True)
class ConsumerConfig(Section):
    """One item of ``consumers``: Centrifugo's `Consumer`."""

    name: str = ""
    """Name of the consumer, unique among `consumers` (letters, digits, `_`; at least two). It
    labels the consumer's metrics and log lines."""
    enabled: bool = False
    """Run this consumer. A disabled one is only checked for its name and type."""
    type: str = ""
    """Kind of consumer: `postgresql`, `kafka`, `nats_jetstream`, `redis_stream`,
    `google_pub_sub`, `aws_sqs` or `azure_service_bus`; the section of the same name holds its
    options."""
    postgresql: PostgresConsumerConfig = subsection(PostgresConsumerConfig)
    """Options of a `postgresql` (outbox table) consumer."""
    kafka: KafkaConsumerConfig = subsection(KafkaConsumerConfig)
    """Options of a `kafka` consumer."""
    nats_jetstream: NatsJetStreamConsumerConfig = subsection(NatsJetStreamConsumerConfig)
    """Options of a `nats_jetstream` consumer."""
    redis_stream: RedisStreamConsumerConfig = subsection(RedisStreamConsumerConfig)
    """Options of a `redis_stream` consumer."""
    google_pub_sub: dict[str, Any] = empty_map()
    """Options of a `google_pub_sub` consumer. Not implemented here: kept as given."""
    aws_sqs: dict[str, Any] = empty_map()
    """Options of an `aws_sqs` consumer. Not implemented here: kept as given."""
    azure_service_bus: dict[str, Any] = empty_map()
    """Options of an `azure_service_bus` consumer. Not implemented here: kept as given."""


def consumer_problem(c: ConsumerConfig) -> str:
    """What is wrong with an enabled consumer's own section, in the words of Centrifugo's
    `Validate()` of that section; empty when nothing is (and for the types not run here)."""
    if c.type == "postgresql":
        pg = c.postgresql
        if not pg.dsn:
            return "no Postgres DSN provided"
        if not pg.outbox_table_name:
            return "no Postgres outbox table name provided"
    elif c.type == "kafka":
        k = c.kafka
        if not k.brokers:
            return "no Kafka brokers provided"
        if not k.topics:
            return "no Kafka topics provided"
        if not k.consumer_group:
            return "no Kafka consumer group provided"
        if k.publication_data_mode.enabled and not k.publication_data_mode.channels_header:
            return "no Kafka channels_header_name provided for publication data mode"
        if k.assume_role_arn and k.sasl_mechanism != "aws-msk-iam":
            return "assume_role_arn requires sasl_mechanism aws-msk-iam"
    elif c.type == "nats_jetstream":
        n = c.nats_jetstream
        if not n.url:
            return "url is required"
        if not n.stream_name:
            return "stream_name is required"
        if not n.durable_consumer_name:
            return "durable_consumer_name is required for consumer"
        if not n.use_existing_consumer and n.deliver_policy not in ("new", "all"):
            return "deliver_policy must be either 'new' or 'all'"
        if n.publication_data_mode.enabled and not n.publication_data_mode.channels_header:
            return "channels_header is required for publication data mode"
    elif c.type == "redis_stream":
        r = c.redis_stream
        if not r.address:
            return "redis address is required"
        if not r.streams:
            return "streams can't be empty"
        if not r.consumer_group:
            return "consumer_group is required"
        if r.publication_data_mode.enabled and not r.publication_data_mode.channels_value:
            return "channels_value is required when publication data mode is enabled"
    return ""
