"""Alerts: an alert stream, acknowledgements, and signed webhook delivery.

Anything in the control plane that needs an operator's attention calls :func:`raise_alert`
(rollback, pause, sample-ratio mismatch, inconclusive step, guard actions; region fail-over
later). An alert is published to the ``KEFU_ALERTS`` stream with its id as the
``Nats-Msg-Id``, so the same alert raised twice (a retried publish, two passes of a controller
deciding the same thing) is stored once. ``kefu cp alerts list|ack`` reads the stream; an
acknowledgement is a key in the ``kefu_alerts`` bucket (``ack.<id>``: who, when).

:class:`WebhookDelivery` (leader only) follows the stream from a cursor stored per webhook
(``cursor.<name>``) and POSTs each alert as JSON with an ``X-Kefu-Signature: sha256=<hex>``
header (HMAC-SHA256 of the body with the webhook's secret) and ``X-Kefu-Alert-Id`` (receivers
deduplicate by it: delivery is at least once). A failed POST is retried with exponential
backoff (``retry_s`` doubling up to ``max_backoff_s``); the cursor moves only past a delivered
alert, so a new leader resumes where the old one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kefu.bus import Bus, BusUnavailable, NotFound, cancel_and_wait
from kefu.errors import KefuError, TemporaryError
from kefu.wire import check_id, decode, encode

__all__ = [
    "BUCKET_ALERTS",
    "STREAM_ALERTS",
    "Alert",
    "Webhook",
    "WebhookDelivery",
    "ack_alert",
    "list_alerts",
    "raise_alert",
    "sign",
]

log = logging.getLogger("kefu.control_plane.alerts")

STREAM_ALERTS = "KEFU_ALERTS"
BUCKET_ALERTS = "kefu_alerts"
SIGNATURE_HEADER = "X-Kefu-Signature"
ALERT_ID_HEADER = "X-Kefu-Alert-Id"

Severity = Literal["info", "warning", "critical"]


class Alert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    #: Stable for the same event (deduplication): e.g. ``rollback:ro-1a2b3c4d5e``.
    id: str
    kind: str  # rollback | pause | srm | inconclusive | guard | failover | ...
    severity: Severity = "warning"
    at: float = Field(default_factory=time.time)
    tenant: str = ""
    resource: str = ""
    #: One line, "English / 中文".
    title: str
    detail: dict[str, Any] = Field(default_factory=dict)
    # filled in by list_alerts
    acked_by: str = ""
    acked_at: float = 0.0


def _subject(a: Alert) -> str:
    return f"kefu.alerts.{a.tenant or '_'}.{a.kind}"


def _ack_key(alert_id: str) -> str:
    return "ack." + hashlib.sha256(alert_id.encode()).hexdigest()[:32]


async def raise_alert(bus: Bus, alert: Alert) -> None:
    """Publish ``alert`` (stored once per id). Errors are the bus's (BusUnavailable…)."""
    if alert.tenant:
        check_id(alert.tenant, "tenant")
    await bus.publish(_subject(alert), encode(alert), msg_id=f"alert:{alert.id}")


async def list_alerts(
    bus: Bus, *, tenant: str = "", since: float = 0.0, unacked: bool = False, limit: int = 500
) -> list[Alert]:
    """Alerts newest last, each with its acknowledgement if any."""
    subject = f"kefu.alerts.{tenant}.>" if tenant else ">"
    msgs = await bus.stream_read(STREAM_ALERTS, subject, since=since, limit=0)
    out: list[Alert] = []
    for m in msgs:
        try:
            a = decode(Alert, m.data, what="alert")
        except KefuError as exc:
            log.warning("skipping alert message %d: %s", m.seq, exc)
            continue
        e = await bus.kv_get(BUCKET_ALERTS, _ack_key(a.id))
        if e is not None:
            ack = json.loads(e.value)
            a = a.model_copy(update={"acked_by": ack["by"], "acked_at": ack["at"]})
        if unacked and a.acked_by:
            continue
        out.append(a)
    return out[-limit:] if limit else out


async def ack_alert(bus: Bus, alert_id: str, *, actor: str, note: str = "") -> Alert:
    """Acknowledge one alert (idempotent: the first acknowledgement stays)."""
    found = [a for a in await list_alerts(bus) if a.id == alert_id]
    if not found:
        raise NotFound(f"no alert {alert_id!r} / 告警 {alert_id!r} 不存在")
    a = found[-1]
    if a.acked_by:
        return a
    now = time.time()
    body = {"by": actor, "at": now, "note": note}
    await bus.kv_put(BUCKET_ALERTS, _ack_key(alert_id), json.dumps(body).encode())
    return a.model_copy(update={"acked_by": actor, "acked_at": now})


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + HMAC-SHA256(secret, body) in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Webhook:
    name: str
    url: str
    secret: str
    timeout_s: float = 5.0


Poster = Callable[[Webhook, bytes, dict[str, str]], Awaitable[int]]


class WebhookFailed(TemporaryError):
    """A webhook did not answer 2xx."""


async def aiohttp_post(hook: Webhook, body: bytes, headers: dict[str, str]) -> int:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=hook.timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.post(hook.url, data=body, headers=headers) as r,
        ):
            return r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WebhookFailed(f"webhook {hook.name}: {exc or type(exc).__name__}") from exc


class WebhookDelivery:
    """Delivers every alert to every webhook, in order, at least once."""

    def __init__(
        self,
        bus: Bus,
        hooks: list[Webhook],
        *,
        post: Poster = aiohttp_post,
        poll_s: float = 1.0,
        retry_s: float = 0.5,
        max_backoff_s: float = 60.0,
    ):
        self.bus = bus
        self.hooks = hooks
        self.post = post
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.max_backoff_s = max_backoff_s
        self.delivered = 0
        self.failures = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def _cursor(self, hook: Webhook) -> int:
        e = await self.bus.kv_get(BUCKET_ALERTS, f"cursor.{hook.name}")
        return int(json.loads(e.value)) if e is not None else 0

    async def deliver_once(self, hook: Webhook) -> int:
        """Deliver what is new for ``hook``; stops at the first failure (retried later)."""
        cursor = await self._cursor(hook)
        msgs = await self.bus.stream_read(STREAM_ALERTS, since_seq=cursor + 1, limit=100)
        n = 0
        for m in msgs:
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(hook.secret, m.data),
            }
            with contextlib.suppress(KefuError):  # undecodable: delivered as stored, no id
                headers[ALERT_ID_HEADER] = decode(Alert, m.data, what="alert").id
            status = await self.post(hook, m.data, headers)
            if not 200 <= status < 300:
                raise WebhookFailed(f"webhook {hook.name} answered HTTP {status}")
            await self.bus.kv_put(BUCKET_ALERTS, f"cursor.{hook.name}", json.dumps(m.seq).encode())
            n += 1
            self.delivered += 1
        return n

    async def _loop(self, hook: Webhook) -> None:
        backoff = self.retry_s
        while True:
            try:
                await self.deliver_once(hook)
                backoff = self.retry_s
                await asyncio.sleep(self.poll_s)
            except (WebhookFailed, BusUnavailable, NotFound) as exc:
                self.failures += 1
                log.warning("alert delivery to %s: %s (retry in %.1f s)", hook.name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._loop(h), name=f"kefu-alerts-{h.name}") for h in self.hooks
            ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
