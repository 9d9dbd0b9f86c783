"""A real multi-region NATS topology for the replication tests and benchmark: one hub
nats-server (JetStream domain ``hub``, account ``KEFU`` for the control plane, one account
``ZONE_<zone>`` per residency zone with no JetStream and no users) and one leaf nats-server per
region (JetStream domain = the region; account ``KEFU`` linked to the hub's ``KEFU``, account
``ZONE`` with JetStream linked to the hub's ``ZONE_<zone>``) — the shape decided for
``kefu up --regions``. Development only: plaintext loopback, one shared password."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kefu.natsserver import find_nats_server, free_port

PASSWORD = "pw"


@dataclass
class ZoneTopology:
    root: Path
    zones: dict[str, list[str]]  # zone → regions
    hub_port: int = 0
    leaf_port: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def zone_of(self, region: str) -> str:
        return next(z for z, rs in self.zones.items() if region in rs)

    def cp_url(self) -> str:
        return f"nats://cp:{PASSWORD}@127.0.0.1:{self.hub_port}"

    def repl_url(self, region: str) -> str:
        """The region's replication connection (its leaf's ZONE account)."""
        return f"nats://{region}-repl:{PASSWORD}@127.0.0.1:{self.ports[region]}"

    def node_url(self, region: str) -> str:
        return f"nats://node-{region}:{PASSWORD}@127.0.0.1:{self.ports[region]}"

    def _write(self, name: str, cfg: dict[str, object]) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        path = d / "nats.conf"
        path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        return path

    def _hub(self) -> dict[str, object]:
        accounts: dict[str, object] = {
            "KEFU": {"jetstream": "enabled", "users": [{"user": "cp", "password": PASSWORD}]}
        }
        leaf_users = []
        for zone, regions in self.zones.items():
            accounts[f"ZONE_{zone}"] = {}
            for r in regions:
                leaf_users += [
                    {"user": f"leaf-{r}-kefu", "password": PASSWORD, "account": "KEFU"},
                    {"user": f"leaf-{r}-zone", "password": PASSWORD, "account": f"ZONE_{zone}"},
                ]
        return {
            "listen": f"127.0.0.1:{self.hub_port}",
            "server_name": "hub",
            "jetstream": {"store_dir": str(self.root / "hub" / "js"), "domain": "hub"},
            "accounts": accounts,
            "leafnodes": {
                "listen": f"127.0.0.1:{self.leaf_port}",
                "authorization": {"users": leaf_users},
            },
        }

    def _leaf(self, region: str) -> dict[str, object]:
        hub = f"127.0.0.1:{self.leaf_port}"
        return {
            "listen": f"127.0.0.1:{self.ports[region]}",
            "server_name": region,
            "jetstream": {"store_dir": str(self.root / region / "js"), "domain": region},
            "accounts": {
                "KEFU": {"users": [{"user": f"node-{region}", "password": PASSWORD}]},
                "ZONE": {
                    "jetstream": "enabled",
                    "users": [{"user": f"{region}-repl", "password": PASSWORD}],
                },
            },
            "leafnodes": {
                "reconnect": 1,
                "remotes": [
                    {"url": f"nats://leaf-{region}-kefu:{PASSWORD}@{hub}", "account": "KEFU"},
                    {"url": f"nats://leaf-{region}-zone:{PASSWORD}@{hub}", "account": "ZONE"},
                ],
            },
        }

    def start(self) -> ZoneTopology:
        binary = str(find_nats_server())
        self.hub_port, self.leaf_port = free_port(), free_port()
        self._spawn("hub", binary, self._hub(), self.hub_port)
        for regions in self.zones.values():
            for r in regions:
                self.ports[r] = free_port()
                self._spawn(r, binary, self._leaf(r), self.ports[r])
        return self

    def _spawn(self, name: str, binary: str, cfg: dict[str, object], port: int) -> None:
        conf = self._write(name, cfg)
        log = (self.root / name / "server.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {name} did not start (see {self.root / name})")

    def stop_region(self, region: str) -> None:
        p = self.procs.pop(region)
        p.kill()
        p.wait(10)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()

    def __enter__(self) -> ZoneTopology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
