"""Broker failures in device calls are transient: gRPC ``UNAVAILABLE``, never ``UNKNOWN``.

A device call that needs the bus (an upload is published, a registration announced)
fails while the broker is unreachable. :func:`broker_call` wraps a servicer method so that
such a failure (:class:`~tsfl.bus.base.BusUnavailable`, or a Kafka client error that
escaped as one) ends the call with ``UNAVAILABLE`` and a message saying so; the SDK
retries ``UNAVAILABLE`` with capped exponential back-off (:mod:`tsfl.rpc.retry`).
Nothing the call did is half-done: the coordinator publishes before it persists an
upload, and a retried registration or upload is idempotent. With ``fail_fast`` the call
is refused at once while the broker is known to be down (rather than waiting for the
Kafka client's request timeout).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc
from aiokafka.errors import KafkaError

from tsfl.bus.base import BusUnavailable
from tsfl.bus.kafka import error_text

#: what a bus call raises when the broker is unreachable
BROKER_ERRORS: tuple[type[BaseException], ...] = (BusUnavailable, KafkaError)

F = TypeVar("F", bound=Callable[..., Any])


class _Outages(Protocol):
    def broker_outage(self) -> str | None: ...


class _Servicer(Protocol):
    jobs: _Outages


def unavailable_message(detail: str) -> str:
    """The details of the ``UNAVAILABLE`` status: they always name the broker."""
    if "broker unreachable" not in detail:
        detail = f"broker unreachable: {detail}"
    return f"{detail}; the call is safe to retry later"


def broker_call(*, fail_fast: bool = False) -> Callable[[F], F]:
    """Decorate a servicer method (unary or response-streaming) of an object whose
    ``jobs.broker_outage()`` says whether the broker is down."""

    def decorate(method: F) -> F:
        async def refuse_if_down(self: _Servicer, context: grpc.aio.ServicerContext) -> None:
            if fail_fast:
                outage = self.jobs.broker_outage()
                if outage is not None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        unavailable_message(outage))

        if inspect.isasyncgenfunction(method):
            @functools.wraps(method)
            async def stream(self: _Servicer, request: Any,
                             context: grpc.aio.ServicerContext) -> Any:
                await refuse_if_down(self, context)
                try:
                    async for item in method(self, request, context):
                        yield item
                except BROKER_ERRORS as exc:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        unavailable_message(error_text(exc)))
            return stream  # type: ignore[return-value]

        @functools.wraps(method)
        async def unary(self: _Servicer, request: Any,
                        context: grpc.aio.ServicerContext) -> Any:
            await refuse_if_down(self, context)
            try:
                return await method(self, request, context)
            except BROKER_ERRORS as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    unavailable_message(error_text(exc)))
        return unary  # type: ignore[return-value]

    return decorate
