"""Tenants on a node: loading, refusal of a broken config, keys, isolation of stores."""

from __future__ import annotations

import os
from pathlib import Path

from support.grpc_node import second_tenant

from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG, TenantRegistry, demo_key_path
from kefu.node.sessions.sqlite_store import sqlite_store_opener
from kefu.node.sessions.store import NewSession


async def test_demo_tenant_key_is_generated_once_and_reused(tmp_path: Path) -> None:
    reg = await TenantRegistry.open(
        tmp_path, [DEMO_TENANT_CONFIG], open_store=sqlite_store_opener()
    )
    try:
        key = reg.new_keys["demo-shop"]
        path = demo_key_path(tmp_path, "demo-shop")
        assert (os.stat(path).st_mode & 0o777) == 0o600
        assert reg.authenticate(key) is reg.tenants["demo-shop"]
        assert reg.authenticate("wrong") is None and reg.authenticate("") is None
    finally:
        await reg.close()
    again = await TenantRegistry.open(
        tmp_path, [DEMO_TENANT_CONFIG], open_store=sqlite_store_opener()
    )
    try:
        assert again.new_keys == {}  # printed once only
        assert again.authenticate(key) is again.tenants["demo-shop"]
    finally:
        await again.close()


async def test_broken_config_is_refused_and_others_still_load(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("tenant:\n  id: broken\n  bogus_field: 1\n", encoding="utf-8")
    reg = await TenantRegistry.open(
        tmp_path / "data", [bad, DEMO_TENANT_CONFIG], open_store=sqlite_store_opener()
    )
    try:
        assert set(reg.tenants) == {"demo-shop"}
        assert len(reg.errors) == 1 and str(bad) in reg.errors[0].error
    finally:
        await reg.close()


async def test_each_tenant_has_its_own_store_and_key(tmp_path: Path) -> None:
    other = second_tenant(tmp_path, "acme", "acme-secret-key")
    reg = await TenantRegistry.open(
        tmp_path / "data", [DEMO_TENANT_CONFIG, other], open_store=sqlite_store_opener()
    )
    try:
        demo, acme = reg.tenants["demo-shop"], reg.tenants["acme"]
        assert reg.authenticate("acme-secret-key") is acme
        assert reg.authenticate(reg.new_keys["demo-shop"]) is demo
        s = await acme.store.create_session(NewSession(channel="web", user_id="u1"))
        assert await demo.store.get_session(s.id) is None
        assert await acme.store.get_session(s.id) is not None
    finally:
        await reg.close()


async def test_kb_and_entities_come_from_the_tenant_config(tmp_path: Path) -> None:
    reg = await TenantRegistry.open(
        tmp_path, [DEMO_TENANT_CONFIG], open_store=sqlite_store_opener()
    )
    try:
        t = reg.tenants["demo-shop"]
        assert len(t.kb) >= 40
        ents = {e.type for e in t.entities.extract("订单2024112512345678 顺丰SF1234567890123 ¥299")}
        assert {"order_number", "tracking_number", "amount"} <= ents
    finally:
        await reg.close()
