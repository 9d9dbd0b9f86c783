"""What happened in a conversation, as typed events for whoever subscribes (pure: no I/O).

The conversation service (and the API adapter in front of it, for what only it sees: failed
requests, refused keys, ended sessions) emits one event per fact; the node's Prometheus
metrics and the control-plane agent's telemetry recorder subscribe. Nothing here knows
about either.

Delivery is synchronous and non-blocking: ``emit`` calls each subscriber of the event's type
in subscription order, on the emitting task, and returns; a subscriber is a plain function
that only updates memory (anything slow must queue on its own bounded queue). The number of
subscribers is bounded (:data:`MAX_SUBSCRIBERS`; one more is refused with a
:class:`~kefu.errors.PermanentError`), and a subscriber that raises is isolated: the error is
logged (at most once a minute per subscriber) and counted in :attr:`EventHub.failures`, the
turn is unaffected and the other subscribers still get the event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from kefu.errors import PermanentError

if TYPE_CHECKING:
    from kefu.node.dialog.turns import TurnResult

__all__ = [
    "MAX_SUBSCRIBERS",
    "AccessRefused",
    "ConversationEvent",
    "EventHub",
    "FeedbackGiven",
    "HandoffStarted",
    "RequestFailed",
    "SessionEnded",
    "TurnServed",
]

log = logging.getLogger("kefu.node.events")

#: Subscribers one hub accepts (metrics, telemetry and a few more); a leak would show here.
MAX_SUBSCRIBERS = 32
#: Seconds between two log lines about the same failing subscriber.
_LOG_EVERY_S = 60.0


@dataclass(frozen=True, kw_only=True)
class TurnServed:
    """A customer turn was answered (not a retry answered from the stored reply)."""

    tenant: str
    result: TurnResult


@dataclass(frozen=True, kw_only=True)
class HandoffStarted:
    """A turn handed the conversation to a human (emitted right after its TurnServed)."""

    tenant: str
    session_id: str
    handoff_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class RequestFailed:
    """A request to the node failed; ``code`` is the gRPC status name, ``tenant`` is empty
    when the caller was not authenticated."""

    tenant: str
    code: str
    #: The session the request named, when it named one (errors attributed to its arm).
    session_id: str = ""
    #: The error's type (``InferenceFailed``…): the node-local guard counts a model failing
    #: at inference, not a shed or rate-limited request, although both answer UNAVAILABLE.
    cause: str = ""


@dataclass(frozen=True, kw_only=True)
class AccessRefused:
    """An API key was missing or unknown (``tenant`` empty), or its role may not call the
    RPC (``tenant`` is its tenant); ``reason`` says which."""

    tenant: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class FeedbackGiven:
    """A customer rated a turn (or a session; ``rating`` 0: no rating given), attributed to
    the rated turn's scenario and model version; empty strings where unknown."""

    tenant: str
    rating: int
    corrected_intent: str = ""
    predicted_intent: str = ""
    scenario: str = ""
    model_version: str = ""
    session_id: str = ""
    #: Whether the customer's problem was solved (None: not asked).
    resolved: bool | None = None


@dataclass(frozen=True, kw_only=True)
class SessionEnded:
    """A session was ended by its channel (EndSession); already-over sessions emit nothing."""

    tenant: str
    session_id: str


ConversationEvent = (
    TurnServed | HandoffStarted | RequestFailed | AccessRefused | FeedbackGiven | SessionEnded
)
E = TypeVar("E", bound=ConversationEvent)


@dataclass
class _Subscriber:
    handler: Callable[[Any], None]
    kinds: tuple[type, ...]
    last_logged: float = field(default=-_LOG_EVERY_S)


class EventHub:
    """Subscribers by event type; :meth:`emit` delivers one event to those of its type."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        self._subscribers: list[_Subscriber] = []
        self._clock = clock
        #: Events a subscriber raised on (isolated; see the module docstring).
        self.failures = 0

    def subscribe(self, handler: Callable[[E], None], *kinds: type[E]) -> Callable[[], None]:
        """Call ``handler(event)`` for every event of one of ``kinds``; returns the function
        that unsubscribes it."""
        if not kinds:
            raise ValueError("subscribe to at least one event type")
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise PermanentError(
                f"event hub is full ({MAX_SUBSCRIBERS} subscribers) / 事件订阅者已达上限"
            )
        sub = _Subscriber(handler=handler, kinds=kinds)
        self._subscribers.append(sub)

        def unsubscribe() -> None:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

        return unsubscribe

    def wants(self, kind: type[ConversationEvent]) -> bool:
        """Whether anyone subscribed to ``kind`` (skip building an event nobody reads)."""
        return any(issubclass(kind, s.kinds) for s in self._subscribers)

    def emit(self, event: ConversationEvent) -> None:
        for sub in tuple(self._subscribers):
            if not isinstance(event, sub.kinds):
                continue
            try:
                sub.handler(event)
            except Exception as exc:  # isolated: the turn and other subscribers go on
                self.failures += 1
                now = self._clock()
                if now - sub.last_logged >= _LOG_EVERY_S:
                    sub.last_logged = now
                    log.error(
                        "event subscriber %s failed on %s: %s",
                        getattr(sub.handler, "__qualname__", sub.handler),
                        type(event).__name__,
                        exc,
                    )
