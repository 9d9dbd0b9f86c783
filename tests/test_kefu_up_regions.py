"""`kefu up --regions`: the multi-region topology on one machine (kefu/up_regions.py) — a hub
and one leaf nats-server per region, the control plane on the hub, one `kefu node run` per
region on its leaf, one gateway per zone following routes — over TLS, idempotent on a second
run; and the flag parsing (zones by prefix or by --zones), unit-tested."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.polling import eventually

from kefu.errors import ConfigError
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natscreds import load_credentials
from kefu.natsserver import inbox_prefix
from kefu.natstopology import RegionSpec
from kefu.up_regions import failover_orders, parse_regions
from kefu.wire import BUCKET_NODES, NodeStatus, decode

PORTS = [
    "--listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "",
    "--cp-listen",
    "127.0.0.1:0",
    "--order-center-listen",
    "",
    "--gateway-listen",
    "127.0.0.1:0",
]


def test_zones_by_prefix_or_flag_and_failover_orders() -> None:
    specs = parse_regions("cn-east, cn-north,eu-1")
    assert [(s.name, s.zone) for s in specs] == [
        ("cn-east", "cn"),
        ("cn-north", "cn"),
        ("eu-1", "eu"),
    ]
    assert failover_orders(specs) == {
        "cn-east": ["cn-north"],
        "cn-north": ["cn-east"],
        "eu-1": [],
    }
    flagged = parse_regions("a,b,c", "z1=a,b; z2=c")
    assert flagged == [
        RegionSpec(name="a", zone="z1"),
        RegionSpec(name="b", zone="z1"),
        RegionSpec(name="c", zone="z2"),
    ]
    assert parse_regions("solo")[0].zone == "solo"
    bad = {
        ("", None): "at least one region",
        ("a,a", None): "twice",
        ("a,b", "z=a"): "no zone for b",
        ("a", "z=a;y=a"): "two zones",
        ("a", "z=a,mars"): "mars not in --regions",
        ("a", "just-a-name"): "ZONE=REGION",
        ("hub", None): "reserved",
        ("Bad Name", None): "--regions",
    }
    for (regions, zones), message in bad.items():
        with pytest.raises(ConfigError, match=message):
            parse_regions(regions, zones)


def _start(data: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "kefu.cli", "up", "--regions", "cn-east,cn-north,eu-1"]
    err = log.open("a", encoding="utf-8")
    proc = subprocess.Popen(
        [*cmd, "--data-dir", str(data), *PORTS],
        stdout=subprocess.PIPE,
        stderr=err,  # a file: the logs never fill a pipe
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    err.close()
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C" in line:
            return proc, "".join(lines)
    proc.kill()
    proc.wait(30)
    pytest.fail("kefu up --regions did not start:\n" + "".join(lines) + log.read_text())


def _stop(proc: subprocess.Popen[str], log: Path) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def _chat(url: str, text: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"{url}/v1/chat/demo-shop/messages",
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_kefu_up_regions_hub_leaves_nodes_gateways_idempotent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    proc, out = _start(data, log)
    try:
        gws = dict(re.findall(r"zone (\w+) \([^)]*\): (http://\S+)/demo", out))
        assert set(gws) == {"cn", "eu"}, out
        assert "leaf eu-1 (zone eu, JetStream domain eu-1) on tls://" in out
        # Through the cn zone's gateway: served in the tenant's home region, over TLS.
        status, body = _chat(gws["cn"], "how do i get a VAT invoice?")
        assert status == 200 and body["intent"] == "invoice", body
        assert body["session_id"].startswith("cn-east-1."), body
        # The eu zone's gateway takes only eu's nodes: the cn tenant is never served there.
        status, body = _chat(gws["eu"], "hi")
        assert status == 503 and body["error"]["messages"]["zh"], body

        # Secrets 0600; each node's NATS credentials and its replication (ZONE) credentials
        # side by side; a node's login is on its region's leaf with the hub's domain.
        pw = data / "nats" / "passwords.json"
        assert pw.stat().st_mode & 0o777 == 0o600
        passwords = json.loads(pw.read_text())
        assert {"control-plane", "gw-cn", "gw-eu", "cn-east-1", "cn-east-1-repl"} <= set(passwords)
        creds = data / "nats" / "creds"
        node = json.loads((creds / "cn-east-1.json").read_text())
        repl = json.loads((creds / "cn-east-1-repl.json").read_text())
        leaf_conf = json.loads(
            (data / "nats" / "regions" / "cn-east" / "nats-server.conf").read_text()
        )
        assert node["domain"] == "hub" and "domain" not in repl
        assert node["url"] == repl["url"] == f"tls://127.0.0.1:{leaf_conf['listen'].split(':')[1]}"
        assert node["ca_file"] == str(data / "pki" / "ca.crt")
        for f in ("cn-east-1.json", "cn-east-1-repl.json", "gw-cn.json", "control-plane.json"):
            assert (creds / f).stat().st_mode & 0o777 == 0o600, f
        hub_conf = json.loads((data / "nats" / "hub" / "nats-server.conf").read_text())
        assert "cert_file" in hub_conf["tls"] and "cert_file" in hub_conf["leafnodes"]["tls"]
        gw_user = next(u for u in hub_conf["accounts"]["KEFU"]["users"] if u["user"] == "gw-cn")
        assert "$KV.kefu_reach.gw-cn.>" in gw_user["permissions"]["publish"]["allow"]
        assert not any("desired" in s for s in gw_user["permissions"]["publish"]["allow"])

        # The control plane's registry: zones, failover orders, the demo tenant's residency.
        cp = re.search(r"(kefu cp --target \S+ --token-file \S+ --ca-file \S+) regions list", out)
        assert cp is not None, out
        listing = subprocess.run(
            [sys.executable, "-m", "kefu.cli", *cp[1].split()[1:], "--json", "regions", "list"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr
        regions = {r["id"]: r for r in json.loads(listing.stdout)["regions"]}
        assert regions["cn-east"]["zone"] == "cn" and regions["cn-east"]["failover"] == ["cn-north"]
        assert regions["eu-1"]["zone"] == "eu"

        # Replication: one zone key per zone (0600), named by every node of the zone; the
        # nodes report replicating (the demo tenant's replica of the other cn region).
        keys = {z: data / "secrets" / f"zone-{z}.key" for z in ("cn", "eu")}
        for f in keys.values():
            assert f.stat().st_mode & 0o777 == 0o600 and len(base64.b64decode(f.read_text())) == 32
        zone_key = keys["cn"].read_text()
        for nid, zone in (("cn-east-1", "cn"), ("cn-north-1", "cn"), ("eu-1-1", "eu")):
            conf = json.loads((data / "nodes" / nid / "node.yaml").read_text())["replication"]
            assert conf == {
                "credentials": str(creds / f"{nid}-repl.json"),
                "zone": zone,
                "key_file": str(keys[zone]),
            }, conf
        peers = {"cn-east-1": "cn-north", "cn-north-1": "cn-east"}
        status = asyncio.run(_replicating(data, peers))
        for nid, other in peers.items():
            streams = status[nid].replication_streams
            assert not streams[f"KEFU_REPLICA_{other}_demo-shop"]["error"], streams
            assert status[nid].replication_lag_s >= 0
    finally:
        _stop(proc, log)

    # A second run reuses everything: the same passwords, the same tenant; it serves again.
    proc, out = _start(data, log)
    try:
        assert json.loads(pw.read_text()) == passwords
        gws = dict(re.findall(r"zone (\w+) \([^)]*\): (http://\S+)/demo", out))
        status, body = _chat(gws["cn"], "我的订单什么时候到？")
        assert status == 200 and body["session_id"].startswith("cn-east-1."), body
        assert keys["cn"].read_text() == zone_key  # the zone key is reused, not replaced
    finally:
        _stop(proc, log)


async def _replicating(data: Path, nodes: dict[str, str]) -> dict[str, NodeStatus]:
    """Each node's status (the hub's node registry, read with the control plane's login)
    once it reports the demo tenant's replica of ``nodes[node]``'s stream."""
    creds = load_credentials(data / "nats" / "creds" / "control-plane.json")
    bus = await NatsBus.connect(
        NatsOptions(
            servers=[creds.url],
            user=creds.user,
            password=creds.password,
            tls=creds.tls,
            inbox_prefix=inbox_prefix(creds.user or "control-plane"),
        )
    )
    try:

        async def status() -> dict[str, NodeStatus]:
            out = {}
            for nid in nodes:
                e = await bus.kv_get(BUCKET_NODES, nid)
                if e is not None:
                    out[nid] = decode(NodeStatus, e.value)
            return out

        def ready(st: dict[str, NodeStatus]) -> bool:
            return all(
                n in st and f"KEFU_REPLICA_{other}_demo-shop" in st[n].replication_streams
                for n, other in nodes.items()
            )

        return await eventually(status, ready, timeout_s=90)
    finally:
        await bus.close()
