"""Deterministic, realistic bilingual demo data for the order center.

Customers (Chinese and English speakers), orders in every state, shipments with tracking
events for shipped and delivered orders. The same ``seed`` always gives the same data, so
tests and benchmarks can name orders by number.
"""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta

__all__ = ["ORDER_STATUSES", "SCHEMA", "STATUS_TEXT", "seed_database"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, lang TEXT NOT NULL, phone TEXT UNIQUE NOT NULL,
  email TEXT NOT NULL, vip INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'active',
  frozen_at TEXT);
CREATE TABLE IF NOT EXISTS orders (
  order_number TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id),
  status TEXT NOT NULL, created_at TEXT NOT NULL, amount REAL NOT NULL, address TEXT NOT NULL,
  items TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shipments (
  tracking_number TEXT PRIMARY KEY, order_number TEXT UNIQUE NOT NULL REFERENCES orders,
  courier TEXT NOT NULL, status TEXT NOT NULL, eta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tracking_events (
  tracking_number TEXT NOT NULL REFERENCES shipments, at TEXT NOT NULL, location_zh TEXT,
  location_en TEXT, text_zh TEXT NOT NULL, text_en TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS returns (
  id TEXT PRIMARY KEY, order_number TEXT UNIQUE NOT NULL REFERENCES orders, reason TEXT NOT NULL,
  status TEXT NOT NULL, refund_amount REAL NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invoices (
  id TEXT PRIMARY KEY, order_number TEXT UNIQUE NOT NULL REFERENCES orders, title TEXT NOT NULL,
  email TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders(customer_id);
"""

ORDER_STATUSES = ("pending_payment", "paid", "shipped", "delivered", "cancelled")
STATUS_TEXT = {
    "pending_payment": ("待付款", "awaiting payment"),
    "paid": ("已付款，待发货", "paid, not yet shipped"),
    "shipped": ("已发货，运输中", "shipped, in transit"),
    "delivered": ("已签收", "delivered"),
    "cancelled": ("已取消", "cancelled"),
    "in_transit": ("运输中", "in transit"),
    "out_for_delivery": ("派送中", "out for delivery"),
}
COURIERS = {
    "SF": ("顺丰速运", "SF Express"),
    "YT": ("圆通速递", "YTO Express"),
    "JD": ("京东物流", "JD Logistics"),
    "ZTO": ("中通快递", "ZTO Express"),
}
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "磊", "洋", "勇", "艳", "杰", "婷", "强", "军", "雪")
_EN_FIRST = ("Emma", "Liam", "Olivia", "Noah", "Ava", "James", "Mia", "Lucas", "Grace", "Ethan")
_EN_LAST = ("Smith", "Brown", "Wilson", "Taylor", "Lee", "Walker", "Clark", "Hall", "Young")
_CITIES = (
    ("上海市", "Shanghai", "浦东新区世纪大道", "Century Avenue, Pudong"),
    ("北京市", "Beijing", "朝阳区建国路", "Jianguo Road, Chaoyang"),
    ("广州市", "Guangzhou", "天河区天河路", "Tianhe Road, Tianhe"),
    ("深圳市", "Shenzhen", "南山区科技园路", "Science Park Road, Nanshan"),
    ("杭州市", "Hangzhou", "西湖区文三路", "Wensan Road, Xihu"),
    ("成都市", "Chengdu", "武侯区人民南路", "Renmin South Road, Wuhou"),
)
_PRODUCTS = (
    ("aurora-buds-pro", "极光无线耳机", "Aurora Buds Pro", 599.0),
    ("pulse-watch-s3", "脉动智能手表S3", "Pulse Watch S3", 1299.0),
    ("featherlight-runner", "轻羽跑鞋", "Featherlight Runner", 459.0),
    ("cloud-pillow", "云朵记忆枕", "Cloud Memory Pillow", 199.0),
    ("linen-shirt", "亚麻衬衫", "Linen Shirt", 259.0),
    ("steel-kettle", "不锈钢电水壶", "Steel Kettle", 149.0),
)
_WEIGHTS = (0.05, 0.32, 0.28, 0.30, 0.05)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def seed_database(
    conn: sqlite3.Connection, *, customers: int = 120, orders: int = 600, seed: int = 7
) -> None:
    """Create the schema and fill an empty database (a no-op when it already has customers)."""
    conn.executescript(SCHEMA)
    if conn.execute("SELECT count(*) FROM customers").fetchone()[0]:
        return
    rnd = random.Random(seed)
    now = datetime(2024, 11, 25, 10, 0, tzinfo=UTC)
    cust_rows = []
    for i in range(customers):
        zh = i % 2 == 0
        name = (
            rnd.choice(_SURNAMES)
            + rnd.choice(_GIVEN)
            + ("" if rnd.random() < 0.4 else rnd.choice(_GIVEN))
            if zh
            else f"{rnd.choice(_EN_FIRST)} {rnd.choice(_EN_LAST)}"
        )
        phone = f"1{rnd.choice('3589')}{i % 10}{10000000 + i * 7919 % 89999999:08d}"
        email = f"user{i:04d}@example.{'cn' if zh else 'com'}"
        cust_rows.append((f"C{i:05d}", name, "zh" if zh else "en", phone, email, int(i % 11 == 0)))
    conn.executemany(
        "INSERT INTO customers(id,name,lang,phone,email,vip) VALUES (?,?,?,?,?,?)", cust_rows
    )
    used: set[str] = set()
    for n in range(orders):
        cid, _name, lang = cust_rows[n % customers][:3]
        created = now - timedelta(days=rnd.randint(0, 20), minutes=rnd.randint(0, 1440))
        number = f"{created:%Y%m%d}{rnd.randint(10000000, 99999999)}"
        while number in used:
            number = f"{created:%Y%m%d}{rnd.randint(10000000, 99999999)}"
        used.add(number)
        status = rnd.choices(ORDER_STATUSES, _WEIGHTS)[0]
        items = [rnd.choice(_PRODUCTS) for _ in range(rnd.randint(1, 2))]
        amount = round(sum(p[3] for p in items), 2)
        city = rnd.choice(_CITIES)
        street_no = rnd.randint(1, 300)
        address = (
            f"{city[0]}{city[2]}{street_no}号{rnd.randint(1, 30)}栋{rnd.randint(101, 2505)}室"
            if lang == "zh"
            else f"Apt {rnd.randint(101, 2505)}, {street_no} {city[3]}, {city[1]}"
        )
        item_json = json.dumps(
            [{"sku": p[0], "name": {"zh": p[1], "en": p[2]}, "price": p[3]} for p in items],
            ensure_ascii=False,
        )
        conn.execute(
            "INSERT INTO orders VALUES (?,?,?,?,?,?,?,?)",
            (number, cid, status, _iso(created), amount, address, item_json, _iso(created)),
        )
        if status in ("shipped", "delivered"):
            courier = rnd.choice(tuple(COURIERS))
            tracking = f"{courier}{rnd.randint(10**11, 10**12 - 1)}"
            shipped = created + timedelta(hours=rnd.randint(4, 30))
            eta = shipped + timedelta(days=rnd.randint(2, 4))
            sstatus = (
                "delivered"
                if status == "delivered"
                else rnd.choice(("in_transit", "out_for_delivery"))
            )
            conn.execute(
                "INSERT INTO shipments VALUES (?,?,?,?,?)",
                (tracking, number, courier, sstatus, eta.date().isoformat()),
            )
            origin, dest = rnd.choice(_CITIES), city
            events = [
                (shipped, origin, "快件已揽收", "Picked up by the courier"),
                (
                    shipped + timedelta(hours=9),
                    origin,
                    "已发往目的地转运中心",
                    "Left the sorting centre",
                ),
                (
                    shipped + timedelta(hours=30),
                    dest,
                    "已到达目的地转运中心",
                    "Arrived at the destination hub",
                ),
            ]
            if sstatus in ("out_for_delivery", "delivered"):
                events.append(
                    (shipped + timedelta(hours=40), dest, "快递员正在派送", "Out for delivery")
                )
            if sstatus == "delivered":
                events.append(
                    (shipped + timedelta(hours=44), dest, "已签收", "Delivered and signed for")
                )
            conn.executemany(
                "INSERT INTO tracking_events VALUES (?,?,?,?,?,?)",
                [(tracking, _iso(at), c[0], c[1], zh, en) for at, c, zh, en in events],
            )
    conn.commit()
