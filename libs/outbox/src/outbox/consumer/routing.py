"""Handlers by CloudEvents type, and how a delivered record finds its handler and payload.

The part of `IdempotentConsumer` that registers handlers and decodes records; `outbox.testing`'s harness
drives the same code, so what a unit test sees is what the consumer does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar, overload

from aiokafka import ConsumerRecord

from outbox.consumer.apply_types import Parsed
from outbox.consumer.dead_letters import REDRIVE_HEADER
from outbox.consumer.handlers import BatchHandler, Handler, PayloadModel, Route
from outbox.envelope import MalformedMessage, decode_record

V = TypeVar("V", bound=PayloadModel)
Data = dict[str, Any]


class HandlerRegistry:
    """Handlers register per CloudEvents type (`fnmatch` patterns allowed, e.g. `console.document.*`); the
    first registered match wins, then `ignore`d types; any other type is dead-lettered."""

    def __init__(self, topic_prefix: str) -> None:
        self.topic_prefix = topic_prefix
        self._routes: list[Route] = []
        self._ignored: list[str] = []

    @overload
    def handler(
        self, *types: str, payload: None = None, version_guard: bool = True, gap_aware: bool = False
    ) -> Callable[[Handler[Data]], Handler[Data]]: ...
    @overload
    def handler(
        self, *types: str, payload: type[V], version_guard: bool = True, gap_aware: bool = False
    ) -> Callable[[Handler[V]], Handler[V]]: ...
    def handler(
        self,
        *types: str,
        payload: type[PayloadModel] | None = None,
        version_guard: bool = True,
        gap_aware: bool = False,
    ) -> Callable[[Handler[Any]], Handler[Any]]:
        """Register a handler for `types`. `payload`: a pydantic model the event's data is validated into
        (`ctx.payload`, typed `EventContext[Model]`); a record whose data does not fit is dead-lettered as
        malformed at once (no retries), the rest of its batch goes on. Without it, `ctx.payload` is the data.

        `gap_aware` (with the version guard): an event whose previous version (`ce_prevversion`, set by
        OutboxWriter) this consumer has not applied is parked, not applied, and applied as soon as that
        version is: each aggregate's versions in order, none skipped. Every event type of those aggregates
        must then reach a guarded handler of this consumer (an event it never applies leaves its successors
        parked); that is why it is opt-in."""

        def register(fn: Handler[Any]) -> Handler[Any]:
            for t in types:
                self._routes.append(
                    Route(t, fn, version_guard, gap_aware=gap_aware and version_guard, payload=payload)
                )
            return fn

        return register

    @overload
    def batch_handler(
        self, *types: str, payload: None = None, version_guard: bool = True, gap_aware: bool = False
    ) -> Callable[[BatchHandler[Data]], BatchHandler[Data]]: ...
    @overload
    def batch_handler(
        self, *types: str, payload: type[V], version_guard: bool = True, gap_aware: bool = False
    ) -> Callable[[BatchHandler[V]], BatchHandler[V]]: ...
    def batch_handler(
        self,
        *types: str,
        payload: type[PayloadModel] | None = None,
        version_guard: bool = True,
        gap_aware: bool = False,
    ) -> Callable[[BatchHandler[Any]], BatchHandler[Any]]:
        """Register a handler that applies many events per call (bulk SQL): the same guarantees, a fraction
        of the round trips. Consecutive events routed to it within one fetched batch come in one call, their
        payloads (validated by `payload`, as for `handler`) in `ctx.payloads`."""

        def register(fn: BatchHandler[Any]) -> BatchHandler[Any]:
            for t in types:
                self._routes.append(
                    Route(
                        t,
                        fn,
                        version_guard,
                        batch=True,
                        gap_aware=gap_aware and version_guard,
                        payload=payload,
                    )
                )
            return fn

        return register

    def ignore(self, *types: str) -> None:
        """Types this consumer deliberately skips (recorded in the inbox, not dead-lettered)."""
        self._ignored.extend(types)

    @property
    def gap_aware(self) -> bool:
        return any(route.gap_aware for route in self._routes)

    def _route(self, event_type: str) -> Route | None:
        for route in self._routes:
            if route.pattern == event_type or fnmatch.fnmatchcase(event_type, route.pattern):
                return route
        return None

    def _is_ignored(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, p) for p in self._ignored)

    def parse(self, record: ConsumerRecord[bytes, bytes]) -> Parsed:
        """Decode a delivered record: its event, handler and payload, or why it is dead-lettered."""
        try:
            event = decode_record(
                topic=record.topic.removeprefix(self.topic_prefix),
                partition=record.partition,
                offset=record.offset,
                headers=record.headers,
                value=record.value,
            )
        except MalformedMessage as exc:
            return Parsed(record, None, None, f"malformed: {exc}")
        route = self._route(event.type)
        redriven = any(key == REDRIVE_HEADER for key, _ in record.headers or ())
        if route is None:
            if self._is_ignored(event.type):
                return Parsed(record, event, None, None, redriven)
            return Parsed(record, event, None, f"no handler for event type {event.type!r}", redriven)
        try:
            payload = route.validate(event)
        except ValueError as exc:  # pydantic's ValidationError: the data cannot fit, no retry can help
            # Passed over like a record of no handler: dead-lettered, counted as seen by the version guard.
            return Parsed(record, event, None, _unfit(event.type, route, exc), redriven)
        except Exception:  # a validator's own bug: validated again in the call, retried like a handler's
            payload = None
        return Parsed(record, event, route, None, redriven, payload)


def _unfit(event_type: str, route: Route, exc: ValueError) -> str:
    """Why a payload does not fit, without its values (a dead letter's headers are read by operators)."""
    model = getattr(route.payload, "__name__", "the payload model")
    errors = getattr(exc, "errors", None)
    try:
        details = errors(include_url=False, include_input=False) if callable(errors) else None
    except TypeError:
        details = None
    if details:
        said = "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ())) or '(root)'}: {e.get('msg')}" for e in details
        )
    else:
        said = f"{type(exc).__name__}: {exc}"
    return f"malformed: {event_type} payload does not fit {model}: {said}"
