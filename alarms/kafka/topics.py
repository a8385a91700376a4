"""Day topics: ``<prefix>.<YYYYMMDD>`` by the local date in the line's IANA zone.

An alarm raised at 23:59:59.999 local time goes to that day's topic, one at
00:00:00.000 to the next, whatever UTC says (Asia/Shanghai's midnight is 16:00
UTC). :class:`TopicManager` creates a day's topic on demand with the configured
partitions and replication factor and remembers which exist, so the relay asks
the broker once per topic, not once per message.

The memory-only embedded broker forgets every topic when it restarts; only
the relay creates topics (every client here disables auto-creation), so a
known topic that is missing tells a restarted broker from one that was only
unreachable (:meth:`TopicManager.lost`). Topic ids would be better, but
``describe_topics`` against tansu stalls for tens of seconds after a restart.

Threading: the functions are pure. A TopicManager belongs to one thread (the
relay's); it is not locked.
"""
from __future__ import annotations

import logging

import zlib
from datetime import datetime, time as dtime, timedelta
from zoneinfo import ZoneInfo

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


class TopicError(RuntimeError):
    """A day topic could not be created or described; the message names the topic and the broker."""


class _QuietLog:
    """librdkafka's ``logger``: each line at DEBUG on ``alarms.kafka.rdkafka`` (confluent-kafka serves
    them from poll(), in the caller's thread), whatever librdkafka's own level for it was."""

    _log = logging.getLogger("alarms.kafka.rdkafka")

    def log(self, level: int, fmt: str, *args) -> None:
        self._log.debug(fmt, *args)


RDKAFKA_LOGGER = _QuietLog()


def local_date(time_ms: int, tz: ZoneInfo) -> str:
    """``YYYYMMDD`` of ``time_ms`` (epoch ms) in ``tz``."""
    return datetime.fromtimestamp(time_ms / 1000, tz).strftime("%Y%m%d")


def topic_for(prefix: str, time_ms: int, tz: ZoneInfo) -> str:
    """The day topic of an event at ``time_ms``: ``<prefix>.<YYYYMMDD>`` (local date in ``tz``)."""
    return f"{prefix}.{local_date(time_ms, tz)}"


def next_midnight_ms(time_ms: int, tz: ZoneInfo) -> int:
    """Epoch ms of the first local midnight strictly after ``time_ms`` (DST-safe: via the local date)."""
    day = datetime.fromtimestamp(time_ms / 1000, tz).date() + timedelta(days=1)
    return int(datetime.combine(day, dtime(0), tz).timestamp() * 1000)


def day_start_ms(time_ms: int, tz: ZoneInfo) -> int:
    """Epoch ms of the local midnight that starts the day of ``time_ms``."""
    day = datetime.fromtimestamp(time_ms / 1000, tz).date()
    return int(datetime.combine(day, dtime(0), tz).timestamp() * 1000)


def snapshot_key(gateway_id: int) -> str:
    return f"snapshot/{gateway_id}"


def snapshot_partition(gateway_id: int, partitions: int) -> int:
    """The partition a gateway's snapshot chunks go to: CRC-32 of the key, as librdkafka's
    ``consistent`` partitioner, so a consumer finds them without reading the other partitions."""
    return (zlib.crc32(snapshot_key(gateway_id).encode()) & 0x7FFFFFFF) % partitions


class TopicManager:
    """Creates day topics on demand and remembers which exist (by name; see the module doc on ids)."""

    def __init__(self, bootstrap: str, partitions: int = 3, replication_factor: int = 1,
                 admin_config: dict | None = None, timeout_s: float = 10.0) -> None:
        if partitions < 1 or replication_factor < 1:
            raise ValueError(f"alarms.partitions / alarms.replication_factor: expected >= 1, "
                             f"got {partitions} / {replication_factor}")
        self.bootstrap, self.partitions, self.replication_factor = bootstrap, partitions, replication_factor
        self.timeout_s = timeout_s
        # never auto-create: tansu creates a topic on a metadata request that allows it, with its own
        # partition count (seen: 0 and 4), and a lost topic must stay visibly lost until we recreate it
        self._conf = {"bootstrap.servers": bootstrap, "log_level": 3, "allow.auto.create.topics": False,
                      "reconnect.backoff.max.ms": 1000, **(admin_config or {})}
        self._admin = AdminClient(self._conf)
        self._known: dict[str, None] = {}   # topics known to exist, in the order they became known
        self.created = 0

    def known(self) -> list[str]:
        return list(self._known)

    def ensure(self, topic: str) -> str:
        """Create ``topic`` unless known to exist (TOPIC_ALREADY_EXISTS is fine); returns it. Raises TopicError."""
        if topic in self._known:
            return topic
        fut = self._admin.create_topics([NewTopic(topic, self.partitions, self.replication_factor)],
                                        operation_timeout=self.timeout_s, request_timeout=self.timeout_s)[topic]
        try:
            fut.result(timeout=self.timeout_s)
            self.created += 1
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicError(f"topic {topic} on {self.bootstrap}: create failed: {exc.args[0].str()}") from None
        except Exception as exc:  # concurrent.futures.TimeoutError: broker unreachable
            raise TopicError(f"topic {topic} on {self.bootstrap}: create failed: {exc!r}") from None
        self._known[topic] = None
        return topic

    def exists(self, topic: str) -> bool:
        """Whether the broker has ``topic`` (a metadata request that never auto-creates). Raises TopicError."""
        try:
            md = self._admin.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise TopicError(f"topic {topic} on {self.bootstrap}: metadata failed: {exc.args[0].str()}") from None
        return md is not None and md.error is None and len(md.partitions) > 0

    def lost(self) -> list[str]:
        """Known topics the broker no longer has (it restarted and lost its data). They are forgotten, so
        the next :meth:`ensure` creates them again. Raises TopicError if the broker is unreachable."""
        gone = [t for t in self._known if not self.exists(t)]
        for t in gone:
            self._known.pop(t, None)
        return gone

    def reconnect(self) -> None:
        """A fresh admin client: after a broker restart an old one kept failing with "transport
        failure" for about 20 s (measured against tansu), a new one connects at once."""
        self._admin = AdminClient(self._conf)

    def forget(self, topic: str) -> None:
        self._known.pop(topic, None)

    def close(self) -> None:
        """Drop the admin client now: librdkafka closes its broker connections when the handle's last
        reference goes, and a broker stopping gracefully waits for its clients (tansu held a gateway's
        stop 5 s for one left open). Idempotent; the manager is not used afterwards."""
        self._admin = None

    def partitions_of(self, topic: str) -> int | None:
        """Partition count of ``topic`` per the broker's metadata, None when it does not exist."""
        md = self._admin.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            return None
        return len(md.partitions)
