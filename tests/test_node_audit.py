"""The node audit log (issue 16): a hash chain (pure), an append-only SQLite file written by a
real node for every admin and agent RPC, `kefu node audit verify|list`, tampering detected
naming the entry, and the records shipped to the control plane with the telemetry (no text)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cp_support import control_plane, cp_node, seed_demo, trust_with
from support.grpc_node import demo_key, node_options, serving, stub_to

from kefu.errors import PermanentError
from kefu.keys import SigningKey
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import NatsServer
from kefu.node.audit.chain import GENESIS, AuditEntry, check_detail, safe_id, seal, verify
from kefu.node.audit.journal import AUDIT_FILE, read_records
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.wire import STREAM_TELEMETRY, TelemetryBatch, decode

MARKER = "MARKER-顾客手机13800138000"
AGENT_TEXT = "AGENTSECRET 您好，我是客服小李"

# ---------------------------------------------------------------- the chain (pure)


def _chain(n: int) -> list:
    records, prev = [], GENESIS
    for i in range(1, n + 1):
        e = AuditEntry(ts=1_700_000_000.0 + i, actor="key:abc", role="admin", action="ListSessions")
        r = seal(e, seq=i, prev=prev)
        records.append(r)
        prev = r.hash
    return records


def test_an_intact_chain_verifies_and_every_kind_of_tampering_is_named() -> None:
    records = _chain(5)
    assert verify(records) == []
    # Edited content (hash left as is): that entry.
    edited = [*records[:2], replace(records[2], actor="key:forged"), *records[3:]]
    assert [b.seq for b in verify(edited)] == [3]
    assert "edited" in str(verify(edited)[0]) and "被修改" in str(verify(edited)[0])
    # Edited and re-hashed: the next entry's link breaks.
    forged = seal(
        AuditEntry(ts=records[2].ts, actor="key:forged", role="admin", action="ListSessions"),
        seq=3,
        prev=records[1].hash,
    )
    assert [b.seq for b in verify([*records[:2], forged, *records[3:]])] == [4]
    # A deleted entry: the gap is named.
    gap = verify([*records[:1], *records[2:]])
    assert gap[0].seq == 3 and "entry 2 missing" in gap[0].reason
    # Deleted from the start too.
    assert verify(records[1:])[0].seq == 2


def test_no_free_text_can_enter_the_log() -> None:
    assert check_detail({"sessions": 3, "agent_id": "agent-7"}) == (
        '{"agent_id":"agent-7","sessions":3}'
    )
    for bad in ({"note": "verified by phone"}, {"text": "我的订单"}, {"x": [1]}):
        with pytest.raises(PermanentError):
            check_detail(bad)
    with pytest.raises(PermanentError):
        seal(AuditEntry(ts=1.0, actor="a b", action="ListSessions"), seq=1, prev=GENESIS)
    with pytest.raises(PermanentError):
        seal(AuditEntry(ts=1.0, actor="a", action="DropTables"), seq=1, prev=GENESIS)
    assert safe_id("小李 agent 7") == "___agent_7"


# ---------------------------------------------------------------- a real node


async def _admin_and_agent_actions(stub: object, md: tuple) -> str:
    """Hand a conversation off and work it as an agent; the session id."""
    s = stub
    handed = await s.Converse(  # type: ignore[attr-defined]
        pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=f"{MARKER} 转人工"), metadata=md
    )
    assert handed.handoff
    await s.ListSessions(pb.ListSessionsRequest(), metadata=md)  # type: ignore[attr-defined]
    await s.GetSession(pb.GetSessionRequest(session_id=handed.session_id), metadata=md)  # type: ignore[attr-defined]
    await s.ListHandoffs(pb.ListHandoffsRequest(), metadata=md)  # type: ignore[attr-defined]
    await s.ClaimHandoff(  # type: ignore[attr-defined]
        pb.ClaimHandoffRequest(handoff_id=handed.handoff_id, agent_id="agent-7"), metadata=md
    )
    await s.AgentReply(  # type: ignore[attr-defined]
        pb.AgentReplyRequest(handoff_id=handed.handoff_id, agent_id="agent-7", text=AGENT_TEXT),
        metadata=md,
    )
    with pytest.raises(grpc.aio.AioRpcError):  # a refused claim is recorded too
        await s.ClaimHandoff(  # type: ignore[attr-defined]
            pb.ClaimHandoffRequest(handoff_id=handed.handoff_id, agent_id="agent-9"), metadata=md
        )
    await s.CloseHandoff(  # type: ignore[attr-defined]
        pb.CloseHandoffRequest(
            handoff_id=handed.handoff_id,
            agent_id="agent-7",
            resolution=pb.HANDOFF_RESOLUTION_RESOLVED,
            note="verified by phone",
        ),
        metadata=md,
    )
    return str(handed.session_id)


async def test_node_records_admin_and_agent_actions_and_verify_names_an_edited_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kefu.cli import main

    data = tmp_path / "node"
    async with serving(node_options(data)) as (node, stub):
        md = demo_key(node)
        sid = await _admin_and_agent_actions(stub, md)
        assert node.audit is not None
        await node.audit.flush()
    records = read_records(data)
    actions = [(r.action, r.outcome) for r in records]
    assert actions == [
        ("ListSessions", "ok"),
        ("GetSession", "ok"),
        ("ListHandoffs", "ok"),
        ("ClaimHandoff", "ok"),
        ("AgentReply", "ok"),
        ("ClaimHandoff", "FAILED_PRECONDITION"),
        ("CloseHandoff", "ok"),
    ]
    get = records[1]
    assert get.target == sid and get.tenant == "demo-shop" and get.actor.startswith("key:")
    assert get.role == "admin,agent,channel"  # the demo key has every role
    reply = json.loads(records[4].detail)
    assert reply == {"agent_id": "agent-7", "chars": len(AGENT_TEXT)}
    # No conversation text anywhere in the file (nor the agent's words, nor the note).
    raw = b"".join(p.read_bytes() for p in data.glob(f"{AUDIT_FILE}*"))
    for text in (MARKER, AGENT_TEXT, "verified by phone"):
        assert text.encode() not in raw
    assert (data / AUDIT_FILE).stat().st_mode & 0o777 == 0o600

    async def kefu(*argv: str) -> tuple[int, str, str]:
        rc = await asyncio.to_thread(main, [*argv, "--data-dir", str(data)])
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, _ = await kefu("node", "audit", "verify")
    assert rc == 0 and "7 entries, hash chain intact" in out
    rc, out, _ = await kefu("node", "audit", "list", "--limit", "2")
    assert rc == 0 and "ClaimHandoff" in out and "CloseHandoff" in out and "ListSessions" not in out

    # The product cannot rewrite the log: the table refuses UPDATE and DELETE.
    conn = sqlite3.connect(data / AUDIT_FILE)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET actor = 'key:forged' WHERE seq = 4")
    # Someone who drops the triggers can; verify then names the entry.
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'key:forged' WHERE seq = 4")
    conn.commit()
    rc, _, err = await kefu("node", "audit", "verify")
    assert rc == 1 and "entry 4:" in err and "edited" in err and "被篡改" in err
    assert "Traceback" not in err
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE seq = 6")
    conn.commit()
    conn.close()
    rc, _, err = await kefu("node", "audit", "verify")
    assert rc == 1 and "entry 6 missing" in err


async def test_rekey_is_recorded_and_extends_the_same_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kefu.cli import main

    data = tmp_path / "node"
    async with serving(node_options(data)) as (node, stub):
        await stub.ListSessions(pb.ListSessionsRequest(), metadata=demo_key(node))
        # A command on the same data directory while the node runs: one chain, not two.
        monkeypatch.delenv("KEFU_MASTER_KEY", raising=False)
        rc = await asyncio.to_thread(
            main, ["node", "rekey", "--tenant", "demo-shop", "--data-dir", str(data)]
        )
        assert rc == 0
        await stub.ListSessions(pb.ListSessionsRequest(), metadata=demo_key(node))
        assert node.audit is not None
        await node.audit.flush()
    capsys.readouterr()
    records = read_records(data)
    assert [r.action for r in records] == ["ListSessions", "key.rekey", "ListSessions"]
    assert records[1].actor.startswith("local:") and records[1].tenant == "demo-shop"
    assert verify(records) == []


# ---------------------------------------------------------------- shipped to the control plane


@pytest.mark.slow
async def test_audit_records_reach_the_control_plane_without_text(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
        key = await seed_demo(stack.cp)
        async with cp_node(tmp_path, nats_server.url, ops_key, telemetry_s=0.2) as (node, agent):
            await agent.wait_for(lambda: "demo-shop" in agent.applied)
            async with stub_to(node) as stub:
                await _admin_and_agent_actions(stub, bearer_metadata(key))
            reader = await NatsBus.connect(NatsOptions(servers=[nats_server.url]))
            try:
                shipped: list = []
                for _ in range(150):
                    msgs = await reader.stream_read(STREAM_TELEMETRY)
                    shipped = [e for m in msgs for e in decode(TelemetryBatch, m.data).audit]
                    if any(e.action == "CloseHandoff" for e in shipped):
                        break
                    await asyncio.sleep(0.1)
                raw = b"".join(m.data for m in msgs)
            finally:
                await reader.close()
    actions = [e.action for e in shipped]
    assert "config.applied" in actions and "model.swapped" in actions
    assert actions[-7:] == [
        "ListSessions",
        "GetSession",
        "ListHandoffs",
        "ClaimHandoff",
        "AgentReply",
        "ClaimHandoff",
        "CloseHandoff",
    ]
    # The control plane holds the chain: the shipped hashes link up, as on the node.
    local = read_records(tmp_path / "node")
    assert [(e.seq, e.hash) for e in shipped] == [(r.seq, r.hash) for r in local]
    for text in (MARKER, AGENT_TEXT, "verified by phone"):
        assert text.encode() not in raw
