"""The demo order center: a small real HTTP service with its own SQLite database.

It stands in for an enterprise's order/ERP system so the demo tenant's plugins have something
real to call: customers, orders, shipments with tracking events, returns and invoices, seeded
with bilingual demo data (:mod:`kefu.demo.seed`). ``kefu demo order-center`` runs it.

API (JSON; every ``/api`` call needs ``Authorization: Bearer <token>``)::

    GET  /health
    GET  /api/orders/{order_number}              the order            404 order_not_found
    GET  /api/orders/{order_number}/tracking     shipment + events    409 not_shipped
    PUT  /api/orders/{order_number}/address      {"address"}          409 already_shipped ...
    POST /api/orders/{order_number}/cancel                            409 already_shipped ...
    POST /api/returns      {"order_number", "reason"}                 409 not_delivered ...
    POST /api/invoices     {"order_number", "title", "email"?}        409 not_paid ...
    POST /api/customers/freeze  {"phone"}                             404 customer_not_found
    POST /admin/faults     {"delay_ms", "garbage", "status"}          fault injection (tests)

Errors are ``{"error": {"code": ..., "message": {"zh": ..., "en": ...}}}``. Database work runs
on one worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from kefu.demo.seed import COURIERS, STATUS_TEXT, seed_database
from kefu.errors import PermanentError

__all__ = ["OrderCenter", "OrderCenterFaults", "seed_order_center"]

log = logging.getLogger("kefu.demo.order_center")
R = TypeVar("R")

_ERRORS = {
    "order_not_found": ("订单不存在", "no such order"),
    "customer_not_found": ("未找到该手机号对应的账户", "no account with that phone number"),
    "not_shipped": ("订单尚未发货", "the order has not shipped yet"),
    "already_shipped": ("订单已发货", "the order has already shipped"),
    "already_cancelled": ("订单已取消", "the order is already cancelled"),
    "not_paid": ("订单尚未付款", "the order has not been paid"),
    "not_delivered": ("订单尚未签收", "the order has not been delivered yet"),
    "return_exists": ("该订单已有退货申请", "a return already exists for this order"),
    "invoice_exists": ("该订单已开过发票", "an invoice was already issued for this order"),
    "bad_request": ("请求参数错误", "bad request"),
    "unauthorized": ("未授权", "unauthorized"),
}


@dataclass(kw_only=True)
class OrderCenterFaults:
    """Fault injection for tests and demos: delay every API answer, answer garbage, or fail."""

    delay_ms: int = 0
    garbage: bool = False
    status: int = 0  # non-zero: answer every API call with this HTTP status


class _Problem(Exception):
    def __init__(self, status: int, code: str):
        self.status, self.code = status, code


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def seed_order_center(
    path: Path, *, customers: int = 120, orders: int = 600, seed: int = 7
) -> None:
    """Create and seed the database file if it has no data yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        seed_database(conn, customers=customers, orders=orders, seed=seed)
    finally:
        conn.close()


def _text(status: str) -> dict[str, str]:
    zh, en = STATUS_TEXT.get(status, (status, status))
    return {"zh": zh, "en": en}


class _Db:
    """All SQL; every method runs on the worker thread."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout=5000")

    def _order_row(self, number: str) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM orders WHERE order_number=?", (number,)).fetchone()
        if row is None:
            raise _Problem(404, "order_not_found")
        return row

    def order(self, number: str) -> dict[str, Any]:
        row = self._order_row(number)
        cust = self.conn.execute(
            "SELECT name, email, phone FROM customers WHERE id=?", (row["customer_id"],)
        ).fetchone()
        return {
            "order": {
                "order_number": row["order_number"],
                "status": row["status"],
                "status_text": _text(row["status"]),
                "created_at": row["created_at"][:16].replace("T", " "),
                "amount": f"¥{row['amount']:.2f}",
                "address": row["address"],
                "items": json.loads(row["items"]),
                "customer": {
                    "id": row["customer_id"],
                    "name": cust["name"],
                    "email": cust["email"],
                },
            }
        }

    def tracking(self, number: str) -> dict[str, Any]:
        row = self._order_row(number)
        ship = self.conn.execute(
            "SELECT * FROM shipments WHERE order_number=?", (number,)
        ).fetchone()
        if ship is None:
            raise _Problem(409, "not_shipped")
        events = self.conn.execute(
            "SELECT * FROM tracking_events WHERE tracking_number=? ORDER BY at",
            (ship["tracking_number"],),
        ).fetchall()
        last = events[-1]
        zh, en = COURIERS.get(ship["courier"], (ship["courier"], ship["courier"]))
        return {
            "shipment": {
                "order_number": row["order_number"],
                "tracking_number": ship["tracking_number"],
                "courier": ship["courier"],
                "courier_name": {"zh": zh, "en": en},
                "status": ship["status"],
                "status_text": _text(ship["status"]),
                "eta": ship["eta"],
                "last_event": {
                    "at": last["at"][:16].replace("T", " "),
                    "text": {
                        "zh": f"{last['location_zh']} {last['text_zh']}",
                        "en": f"{last['text_en']} ({last['location_en']})",
                    },
                },
                "events": len(events),
            }
        }

    def change_address(self, number: str, address: str) -> dict[str, Any]:
        row = self._order_row(number)
        if row["status"] in ("shipped", "delivered"):
            raise _Problem(409, "already_shipped")
        if row["status"] == "cancelled":
            raise _Problem(409, "already_cancelled")
        self.conn.execute(
            "UPDATE orders SET address=?, updated_at=? WHERE order_number=?",
            (address, _now(), number),
        )
        return self.order(number)

    def cancel(self, number: str) -> dict[str, Any]:
        row = self._order_row(number)
        if row["status"] == "cancelled":
            raise _Problem(409, "already_cancelled")
        if row["status"] in ("shipped", "delivered"):
            raise _Problem(409, "already_shipped")
        refund = row["amount"] if row["status"] == "paid" else 0.0
        self.conn.execute(
            "UPDATE orders SET status='cancelled', updated_at=? WHERE order_number=?",
            (_now(), number),
        )
        out = self.order(number)
        out["refund_amount"] = f"¥{refund:.2f}"
        return out

    def create_return(self, number: str, reason: str) -> dict[str, Any]:
        row = self._order_row(number)
        if row["status"] != "delivered":
            raise _Problem(409, "not_delivered")
        if self.conn.execute("SELECT 1 FROM returns WHERE order_number=?", (number,)).fetchone():
            raise _Problem(409, "return_exists")
        rid = f"RMA{secrets.randbelow(10**8):08d}"
        self.conn.execute(
            "INSERT INTO returns VALUES (?,?,?,?,?,?)",
            (rid, number, reason, "requested", row["amount"], _now()),
        )
        return {
            "return": {
                "id": rid,
                "order_number": number,
                "status": "requested",
                "refund_amount": f"¥{row['amount']:.2f}",
            }
        }

    def create_invoice(self, number: str, title: str, email: str | None) -> dict[str, Any]:
        row = self._order_row(number)
        if row["status"] in ("pending_payment", "cancelled"):
            raise _Problem(409, "not_paid")
        if self.conn.execute("SELECT 1 FROM invoices WHERE order_number=?", (number,)).fetchone():
            raise _Problem(409, "invoice_exists")
        if not email:
            email = self.conn.execute(
                "SELECT email FROM customers WHERE id=?", (row["customer_id"],)
            ).fetchone()["email"]
        iid = f"INV{secrets.randbelow(10**8):08d}"
        self.conn.execute(
            "INSERT INTO invoices VALUES (?,?,?,?,?,?)",
            (iid, number, title, email, "issued", _now()),
        )
        return {"invoice": {"id": iid, "order_number": number, "title": title, "email": email}}

    def freeze(self, phone: str) -> dict[str, Any]:
        digits = "".join(c for c in phone if c.isdigit())[-11:]
        row = self.conn.execute("SELECT * FROM customers WHERE phone=?", (digits,)).fetchone()
        if row is None:
            raise _Problem(404, "customer_not_found")
        self.conn.execute(
            "UPDATE customers SET status='frozen', frozen_at=coalesce(frozen_at, ?) WHERE id=?",
            (_now(), row["id"]),
        )
        masked = digits[:3] + "****" + digits[-4:]
        return {"customer": {"id": row["id"], "status": "frozen", "phone": masked}}

    def close(self) -> None:
        self.conn.close()


class OrderCenter:
    """The service: ``async with OrderCenter(db_path, port=0) as oc: oc.url`` (a free port)."""

    def __init__(
        self,
        db_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 7480,
        token: str | None = None,
        seed_orders: int = 600,
        seed_customers: int = 120,
    ):
        self.db_path = Path(db_path)
        self.host, self.port = host, port
        self.token = token or secrets.token_urlsafe(24)
        self.faults = OrderCenterFaults()
        self._seed = (seed_customers, seed_orders)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="order-center-db")
        self._db: _Db | None = None
        self._runner: web.AppRunner | None = None
        #: W3C ``traceparent`` headers of the latest API calls (the trace a call belongs to).
        self.traceparents: collections.deque[str] = collections.deque(maxlen=100)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _run(self, fn: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def start(self) -> OrderCenter:
        customers, orders = self._seed

        def prepare() -> _Db:
            seed_order_center(self.db_path, customers=customers, orders=orders)
            return _Db(self.db_path)

        self._db = await self._run(prepare)
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/api/orders/{n}", self._get_order),
                web.get("/api/orders/{n}/tracking", self._tracking),
                web.put("/api/orders/{n}/address", self._address),
                web.post("/api/orders/{n}/cancel", self._cancel),
                web.post("/api/returns", self._returns),
                web.post("/api/invoices", self._invoices),
                web.post("/api/customers/freeze", self._freeze),
                web.post("/admin/faults", self._set_faults),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise PermanentError(f"order center cannot listen on {self.url}: {exc}") from exc
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("order center on %s (%s)", self.url, self.db_path)
        return self

    async def stop(self) -> None:
        """Idempotent."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._db is not None:
            db, self._db = self._db, None
            await self._run(db.close)
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> OrderCenter:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return _error(401, "unauthorized")
        if request.path.startswith("/api/"):
            if tp := request.headers.get("traceparent"):
                self.traceparents.append(tp)
            f = self.faults
            if f.delay_ms:
                await asyncio.sleep(f.delay_ms / 1000)
            if f.status:
                return web.json_response({"error": {"code": "injected"}}, status=f.status)
            if f.garbage:
                return web.Response(text="<html>502 upstream gateway</html>", status=200)
        try:
            return await handler(request)
        except _Problem as p:
            return _error(p.status, p.code)

    async def _body(self, request: web.Request, *required: str) -> dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Problem(400, "bad_request") from exc
        if not isinstance(data, dict) or any(
            not isinstance(data.get(k), str) or not data[k].strip() for k in required
        ):
            raise _Problem(400, "bad_request")
        return data

    def _db_call(self, fn: Callable[[_Db], R]) -> Callable[[], R]:
        db = self._db
        if db is None:
            raise _Problem(503, "bad_request")
        return lambda: fn(db)

    # ------------------------------------------------------------------ handlers

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _get_order(self, r: web.Request) -> web.Response:
        n = r.match_info["n"]
        return web.json_response(await self._run(self._db_call(lambda db: db.order(n))))

    async def _tracking(self, r: web.Request) -> web.Response:
        n = r.match_info["n"]
        return web.json_response(await self._run(self._db_call(lambda db: db.tracking(n))))

    async def _address(self, r: web.Request) -> web.Response:
        n, body = r.match_info["n"], await self._body(r, "address")
        address = body["address"].strip()[:200]
        out = await self._run(self._db_call(lambda db: db.change_address(n, address)))
        return web.json_response(out)

    async def _cancel(self, r: web.Request) -> web.Response:
        n = r.match_info["n"]
        return web.json_response(await self._run(self._db_call(lambda db: db.cancel(n))))

    async def _returns(self, r: web.Request) -> web.Response:
        body = await self._body(r, "order_number", "reason")
        n, reason = body["order_number"], body["reason"][:200]
        out = await self._run(self._db_call(lambda db: db.create_return(n, reason)))
        return web.json_response(out, status=201)

    async def _invoices(self, r: web.Request) -> web.Response:
        body = await self._body(r, "order_number", "title")
        n, title, email = body["order_number"], body["title"][:100], body.get("email") or None
        out = await self._run(self._db_call(lambda db: db.create_invoice(n, title, email)))
        return web.json_response(out, status=201)

    async def _freeze(self, r: web.Request) -> web.Response:
        phone = (await self._body(r, "phone"))["phone"]
        return web.json_response(await self._run(self._db_call(lambda db: db.freeze(phone))))

    async def _set_faults(self, r: web.Request) -> web.Response:
        body = await self._body(r)
        self.faults = OrderCenterFaults(
            delay_ms=int(body.get("delay_ms", 0)),
            garbage=bool(body.get("garbage", False)),
            status=int(body.get("status", 0)),
        )
        return web.json_response({"faults": vars(self.faults)})


def _error(status: int, code: str) -> web.Response:
    zh, en = _ERRORS.get(code, (code, code))
    return web.json_response(
        {"error": {"code": code, "message": {"zh": zh, "en": en}}}, status=status
    )
