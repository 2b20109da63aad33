"""The kafka consumer's pure parts (app/consumers/kafka.py): the aiokafka options built from
Centrifugo's `consumers[].kafka` keys, the queue threshold, header reading, and what checkconfig
says about a kafka item. No Kafka broker runs on this project's machines, so the consumer itself
is not run here (and not against any stand-in for a broker)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from app.api.executor import ApiExecutor
from app.config import ConfigError, load_config
from app.config.schema_consumers import ConsumerConfig, KafkaConsumerConfig
from app.config.support import findings
from app.consumers import ConsumerContext
from app.consumers.dispatch import Dispatcher
from app.consumers.kafka import (
    CLIENT_ID,
    client_options,
    create_consumer,
    headers_of,
    method_of,
    queue_threshold,
)
from tests.support.node import memory_node
from tests.support.ports import free_port
from tests.support.tls_certs import make_ca

BASE = KafkaConsumerConfig(brokers=("k1:9092", "k2:9092"), topics=("t",), consumer_group="g")


def test_options_follow_centrifugo_defaults() -> None:
    opts = client_options("c", BASE)
    assert opts == {
        "bootstrap_servers": ["k1:9092", "k2:9092"],
        "group_id": "g",
        "client_id": CLIENT_ID,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 500,
        "isolation_level": "read_committed",
    }
    assert CLIENT_ID == "centrifugo"


def test_options_fetch_and_membership() -> None:
    cfg = replace(
        BASE,
        fetch_max_wait=0.25,
        fetch_max_bytes=1024,
        fetch_read_uncommitted=True,
        instance_id="pod-1",
    )
    opts = client_options("c", cfg)
    assert opts["fetch_max_wait_ms"] == 250
    assert opts["fetch_max_bytes"] == 1024
    assert opts["isolation_level"] == "read_uncommitted"
    assert opts["group_instance_id"] == "pod-1"
    # Zero values take Centrifugo's defaults (NewKafkaConsumer).
    opts = client_options("c", replace(BASE, fetch_max_wait=0.0, fetch_max_bytes=0))
    assert opts["fetch_max_wait_ms"] == 500 and "fetch_max_bytes" not in opts


@pytest.mark.parametrize(
    ("mechanism", "expected"),
    [("plain", "PLAIN"), ("scram-sha-256", "SCRAM-SHA-256"), ("scram-sha-512", "SCRAM-SHA-512")],
)
def test_sasl_mechanisms(mechanism: str, expected: str) -> None:
    cfg = replace(BASE, sasl_mechanism=mechanism, sasl_user="u", sasl_password="p")
    opts = client_options("c", cfg)
    assert opts["sasl_mechanism"] == expected
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("u", "p")
    assert opts["security_protocol"] == "SASL_PLAINTEXT"


def test_aws_msk_iam_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported SASL mechanism: aws-msk-iam"):
        client_options("c", replace(BASE, sasl_mechanism="aws-msk-iam"))


def test_tls_with_and_without_sasl(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    tls = replace(BASE.tls, enabled=True, server_ca_pem=str(ca.cert_path))
    opts = client_options("c", replace(BASE, tls=tls))
    assert isinstance(opts["ssl_context"], ssl.SSLContext)
    assert opts["security_protocol"] == "SSL"
    opts = client_options("c", replace(BASE, tls=tls, sasl_mechanism="plain"))
    assert opts["security_protocol"] == "SASL_SSL"


@pytest.mark.parametrize(("configured", "threshold"), [(-1, 0), (0, 1000), (1000, 1000), (5, 5)])
def test_partition_queue_threshold(configured: int, threshold: int) -> None:
    assert queue_threshold(replace(BASE, partition_queue_max_size=configured)) == threshold


def test_headers_and_method() -> None:
    headers = headers_of([("centrifugo-method", b"publish"), ("centrifugo-method", b"broadcast")])
    assert method_of(headers, "centrifugo-method") == "publish"  # the first one, as Go reads it
    assert method_of(headers, "") == ""
    assert method_of(headers, "other") == ""
    assert headers_of(None) == []
    assert headers_of([("x", b"\xff")]) == [("x", "\ufffd")]


def _load(tmp_path: Path, kafka: dict[str, object], enabled: bool = True) -> object:
    item = {"name": "kf", "enabled": enabled, "type": "kafka", "kafka": kafka}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"consumers": [item]}))
    return load_config(str(path), env={})


KAFKA = {"brokers": ["k:9092"], "topics": ["t"], "consumer_group": "g"}


def test_checkconfig_refuses_a_sasl_mechanism_aiokafka_lacks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"in consumer kf \(kafka\): unsupported SASL mechanism"):
        _load(tmp_path, {**KAFKA, "sasl_mechanism": "aws-msk-iam"})
    _load(tmp_path, {**KAFKA, "sasl_mechanism": "aws-msk-iam"}, enabled=False)  # not run: fine
    _load(tmp_path, {**KAFKA, "sasl_mechanism": "scram-sha-512"})


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"topics": ["t"], "consumer_group": "g"}, "no Kafka brokers provided"),
        ({"brokers": ["k"], "consumer_group": "g"}, "no Kafka topics provided"),
        ({"brokers": ["k"], "topics": ["t"]}, "no Kafka consumer group provided"),
    ],
)
def test_checkconfig_kafka_required_keys(
    tmp_path: Path, kafka: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, kafka)


def test_unsupported_kafka_keys_are_reported(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {**KAFKA, "dial_timeout": "1s"})
    assert [f.key for f in findings(cfg)] == ["consumers[kf].kafka.dial_timeout"]


class _Attempts(logging.Handler):
    """Collects the consumer's client-init error lines; `twice` is set at the second."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.twice = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "initializing Kafka" in record.getMessage():
            self.lines.append(record.getMessage())
            if len(self.lines) >= 2:
                self.twice.set()


async def test_unreachable_brokers_start_returns_and_stop_is_clean(tmp_path: Path) -> None:
    """The one path runnable here for real: brokers that refuse connections (a closed local
    port). The start returns at once, the client is retried in the background with one error
    line per attempt, and the stop ends it all."""
    port = free_port()  # nothing listens there
    cfg = replace(BASE, brokers=(f"127.0.0.1:{port}",))
    async with memory_node(tmp_path, {}) as node:
        consumer = create_consumer(
            replace(ConsumerConfig(), name="kf", enabled=True, type="kafka", kafka=cfg),
            ConsumerContext(dispatcher=Dispatcher(ApiExecutor(node, "consuming")), node_id="n"),
        )
        attempts = _Attempts()
        logger = logging.getLogger("centrifugo.consumers.kafka")
        logger.addHandler(attempts)
        try:
            await consumer.start()  # returns at once
            await asyncio.wait_for(attempts.twice.wait(), 10)  # the backoff loop goes on
        finally:
            logger.removeHandler(attempts)
        assert "consumer kf: error initializing Kafka client" in attempts.lines[0]
        await asyncio.wait_for(consumer.stop(), 5)
        await consumer.stop()  # idempotent
