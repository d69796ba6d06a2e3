"""Events from RabbitMQ (SPEC §16): each message body is the event JSON of ``POST /api/v1/events``.

A message is ingested exactly as the HTTP endpoint ingests a body (``connect.intake`` then
``event_ingest``), with its ``source_service`` standing for the caller: that service client must exist,
be active and hold ``events:write`` for the event's type. Outcomes:

- stored, or a replay of a stored event: acknowledged, after ``event_ingest`` has committed;
- refused (not JSON, a field the API would refuse, an unknown or unauthorised source, an idempotency
  conflict, any other business refusal): published to ``<queue>.invalid`` with the error in its headers,
  then acknowledged; nothing is stored;
- the database unreachable (or not migrated yet): the message goes back to the queue unacknowledged (``requeue``) and the
  consumer waits, doubling the wait up to ``EVENTS_RETRY_MAX_SECONDS``, before it takes the next one.

A consumer killed at any moment loses nothing (what it had not acknowledged is delivered again) and
doubles nothing (a redelivered event is a replay of the stored one).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, close_old_connections, connections
from kombu import Connection, Consumer, Exchange, Producer, Queue
from rest_framework import exceptions as drf
from rest_framework.parsers import JSONParser
from rest_framework.settings import api_settings

from config.api.errors import DomainError
from points.auth import ServicePrincipal

from .intake import event_input_validated, event_source_check
from .selectors import service_client_active
from .services import IngestResult, event_ingest

logger = logging.getLogger("connect.bus")

# Header names of a dead-lettered message.
ERROR_CODE_HEADER = "x-error-code"
ERROR_MESSAGE_HEADER = "x-error-message"
ERROR_DETAILS_HEADER = "x-error-details"
MAX_HEADER_CHARS = 4000


class _Stopped(Exception):
    """Raised out of the broker reconnection loop when the consumer was asked to stop."""


@dataclass
class EventRefused(Exception):
    """Why a message cannot become an event; the body of SPEC §4 without the HTTP status."""

    code: str
    message: str
    details: dict = field(default_factory=dict)


def dead_letter_queue_name(queue_name: str) -> str:
    return f"{queue_name}.invalid"


def _json_parser() -> JSONParser:
    """The API's own JSON parser (the first configured one that reads JSON), so a body the HTTP
    endpoint would refuse as malformed is refused here too."""
    for parser_class in api_settings.DEFAULT_PARSER_CLASSES:
        if parser_class.media_type == "application/json":
            return parser_class()
    return JSONParser()


def _body_parsed(body: bytes | str):
    if isinstance(body, str):  # the AMQP client decodes a body published with a text content_encoding
        body = body.encode("utf-8")
    if len(body) > settings.API_MAX_BODY_BYTES:
        raise EventRefused(
            "request_too_large",
            f"The message body exceeds {settings.API_MAX_BODY_BYTES} bytes.",
            {"max_bytes": settings.API_MAX_BODY_BYTES},
        )
    try:
        return _json_parser().parse(io.BytesIO(body), "application/json", {"encoding": "utf-8"})
    except drf.ParseError as exc:
        raise EventRefused(
            "validation_error", "The message body is not valid JSON.", {"body": [str(exc.detail)]}
        ) from None
    except RecursionError:
        raise EventRefused(
            "validation_error", "The message body is not valid JSON.", {"body": ["Nested too deeply."]}
        ) from None


def _details(detail) -> dict:
    if isinstance(detail, dict):
        return {key: _details_value(value) for key, value in detail.items()}
    return {"non_field_errors": _details_value(detail)}


def _details_value(value):
    if isinstance(value, dict):
        return {key: _details_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_details_value(item) for item in value]
    return str(value)


def event_message_ingest(body: bytes | str) -> IngestResult:
    """Ingest one message body as ``POST /api/v1/events`` ingests a request body.

    Raises ``EventRefused`` for a message that must not be retried; database errors propagate
    (nothing was stored, the message should be delivered again).
    """
    data = _body_parsed(body)
    try:
        data = event_input_validated(data)
    except drf.ValidationError as exc:
        raise EventRefused("validation_error", "The event is invalid.", _details(exc.detail)) from None
    client = service_client_active(name=data["source_service"])
    if client is None:
        raise EventRefused(
            "not_authenticated",
            "source_service is not an active service client.",
            {"source_service": data["source_service"]},
        )
    try:
        event_source_check(principal=ServicePrincipal(client), data=data)
    except drf.PermissionDenied as exc:
        raise EventRefused("permission_denied", str(exc.detail), {"source_service": data["source_service"]}) from None
    try:
        return event_ingest(client_name=client.name, data=data)
    except DomainError as exc:
        raise EventRefused(exc.code, exc.message, exc.details) from None


def _header_text(value: str) -> str:
    return value if len(value) <= MAX_HEADER_CHARS else value[: MAX_HEADER_CHARS - 1] + "…"


class EventConsumer:
    """Consumes ``queue_name`` until ``stop()``; one message at a time, at most ``prefetch`` unacknowledged."""

    def __init__(
        self,
        *,
        broker_url: str | None = None,
        queue_name: str | None = None,
        prefetch: int | None = None,
        retry_base: float | None = None,
        retry_max: float | None = None,
    ):
        self.broker_url = broker_url or settings.EVENTS_BROKER_URL
        self.queue_name = queue_name or settings.EVENTS_QUEUE
        self.prefetch = max(1, prefetch or settings.EVENTS_PREFETCH)
        self.retry_base = settings.EVENTS_RETRY_BASE_SECONDS if retry_base is None else retry_base
        self.retry_max = settings.EVENTS_RETRY_MAX_SECONDS if retry_max is None else retry_max
        self._stopping = threading.Event()
        self._outage_wait = 0.0
        self.counts = {"ingested": 0, "replayed": 0, "dead_lettered": 0, "requeued": 0}
        self._dead_letter_publish = None  # Producer.publish, revived by kombu if its connection dropped

    def stop(self) -> None:
        """Stop after the message being handled (if any); safe from a signal handler."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def queues(self) -> tuple[Queue, Queue]:
        exchange = Exchange("", type="direct")  # the default exchange: publishers route by queue name
        queue = Queue(self.queue_name, exchange, routing_key=self.queue_name, durable=True)
        dead = dead_letter_queue_name(self.queue_name)
        return queue, Queue(dead, exchange, routing_key=dead, durable=True)

    def run(self) -> None:
        """Consume until stopped, reconnecting with backoff when the broker goes away."""
        # Dead letters go out on a connection of their own, with publisher confirms: a dead letter is
        # on the broker before its original is acknowledged, and waiting for that confirm reads only
        # that connection, so no further delivery is handled inside the current one.
        with (
            Connection(self.broker_url, heartbeat=60) as connection,
            Connection(self.broker_url, transport_options={"confirm_publish": True}) as publisher,
        ):
            errors = connection.recoverable_connection_errors + connection.recoverable_channel_errors
            while not self.stopping:
                try:
                    for each in (connection, publisher):
                        each.ensure_connection(
                            errback=self._broker_unreachable, interval_start=1, interval_step=2, interval_max=30
                        )
                    self._consume(connection, publisher)
                except _Stopped:
                    break
                except errors:
                    if self.stopping:
                        break
                    logger.warning("lost the broker connection; reconnecting", exc_info=True)
                    connection.release()
                    publisher.release()
                    self._sleep(1.0)

    def _broker_unreachable(self, exc, interval):
        logger.warning("broker unreachable, retrying in %ss", interval, extra={"error": str(exc)})
        if self.stopping:
            raise _Stopped

    def _consume(self, connection, publisher) -> None:
        queue, dead_letter_queue = self.queues()
        channel = connection.channel()
        try:
            dead_letter_queue.bind(channel).declare()
            producer = Producer(publisher.default_channel, exchange=dead_letter_queue.exchange, auto_declare=False)
            # Dead letters are rare: the broker may have closed the idle publishing connection (missed
            # heartbeats) since the last one; ``ensure`` reconnects and publishes again.
            self._dead_letter_publish = publisher.ensure(producer, producer.publish, max_retries=3, interval_start=0.5)
            consumer = Consumer(channel, queues=[queue], on_message=self._on_message, auto_declare=True)
            consumer.qos(prefetch_count=self.prefetch)
            with consumer:
                logger.info("consuming events", extra={"queue": self.queue_name, "prefetch": self.prefetch})
                while not self.stopping:
                    try:
                        connection.drain_events(timeout=1)
                    except TimeoutError:
                        pass
                    connection.heartbeat_check()
        finally:
            self._dead_letter_publish = None
            try:
                channel.close()
            except Exception:  # closing a channel of a dead connection; what was unacked is redelivered
                logger.debug("channel close failed", exc_info=True)

    def _on_message(self, message) -> None:
        if self.stopping:
            return  # left unacknowledged: the broker gives it to the next consumer
        # As around a web request: a connection that broke or passed DB_CONN_MAX_AGE is replaced
        # before use instead of failing this message.
        close_old_connections()
        try:
            result = event_message_ingest(message.body)
        except EventRefused as refusal:
            self._dead_letter(message, refusal)
            return
        except (DataError, IntegrityError) as exc:  # about this message's data: retrying would not help
            self._internal_error(message, exc)
            return
        except (DatabaseError, InterfaceError) as exc:
            # Unreachable, restarting, not migrated yet, or a connection that closed under it (an
            # InterfaceError is no DatabaseError): nothing was stored, the message waits.
            self._database_unreachable(message, exc)
            return
        except Exception as exc:  # a fault of this message's handling: keep it aside, go on with the others
            self._internal_error(message, exc)
            return
        self._outage_wait = 0.0
        message.ack()
        self.counts["replayed" if result.replayed else "ingested"] += 1

    def _internal_error(self, message, exc: Exception) -> None:
        logger.exception("event message could not be handled", extra={"queue": self.queue_name})
        self._dead_letter(message, EventRefused("internal_error", f"{type(exc).__name__}: {exc}"))

    def _dead_letter(self, message, refusal: EventRefused) -> None:
        headers = dict(message.headers or {})
        headers.update(
            {
                ERROR_CODE_HEADER: refusal.code,
                ERROR_MESSAGE_HEADER: _header_text(refusal.message),
                ERROR_DETAILS_HEADER: _header_text(json.dumps(refusal.details, ensure_ascii=False, default=str)),
            }
        )
        properties = message.properties or {}
        self._dead_letter_publish(
            message.body,
            routing_key=dead_letter_queue_name(self.queue_name),
            headers=headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            delivery_mode=2,
            message_id=properties.get("message_id"),
        )
        message.ack()
        self.counts["dead_lettered"] += 1
        logger.warning(
            "event message refused and dead-lettered",
            extra={"queue": self.queue_name, "code": refusal.code, "error": refusal.message},
        )

    def _database_unreachable(self, message, exc: Exception) -> None:
        message.requeue()
        self.counts["requeued"] += 1
        connections.close_all()  # the next try opens a fresh connection
        self._outage_wait = min(self.retry_max, max(self.retry_base, self._outage_wait * 2))
        logger.warning(
            "database unavailable; message returned to the queue",
            extra={"queue": self.queue_name, "retry_in": self._outage_wait, "error": str(exc)},
        )
        self._sleep(self._outage_wait)

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)
