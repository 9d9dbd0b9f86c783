"""Shared fixtures: a tiny real dataset, a signing key, a tiny bundle trained once per run,
real nats-servers, and a real node over gRPC (helpers: the ``support`` package)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kefu.keys import SigningKey, TrustStore, generate_keypair

if TYPE_CHECKING:
    from cp_support import SecuredNats

    from kefu.natsserver import NatsServer
    from kefu.node.serving.server import Node
    from kefu.v1.node_pb2_grpc import KefuNodeStub

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "models" / "data"
TINY_LABELS = ("delivery_tracking", "return_refund", "greeting")


@pytest.fixture(autouse=True)
def _kefu_logger_restored() -> Iterator[None]:
    """configure_logging() (called by in-process nodes and tests) replaces the ``kefu``
    logger's handlers and stops propagation; later tests' ``caplog`` must still see records."""
    logger = logging.getLogger("kefu")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def _subset(src: Path, dest: Path) -> Path:
    rows = [
        json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    keep = [r for r in rows if r["label"] in TINY_LABELS]
    dest.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8"
    )
    return dest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three real demo-shop intents (zh + en): a train and a held-out dev file."""
    d = tmp_path_factory.mktemp("tiny")
    src = DATA / "demo_shop_intent"
    return _subset(src / "train.jsonl", d / "train.jsonl"), _subset(
        src / "dev.jsonl", d / "dev.jsonl"
    )


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return generate_keypair(tmp_path_factory.mktemp("keys"), "test")


@pytest.fixture(scope="session")
def trust(signing_key: SigningKey) -> TrustStore:
    return TrustStore([signing_key.public])


def tiny_config(**kw: object):  # type: ignore[no-untyped-def]
    from kefu.models.training import TrainConfig

    base: dict[str, object] = dict(
        family="ngram", epochs=15, vocab_size=800, bigram_buckets=4096, latency_rounds=20, threads=1
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: tuple[Path, Path], signing_key: SigningKey
) -> Path:
    """A signed INT8 bundle trained end to end from the tiny dataset (a few seconds)."""
    from kefu.models.dataset import load_dataset
    from kefu.models.training import train_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-intent" / "1"
    train_bundle(
        load_dataset(tiny_data[0]),
        load_dataset(tiny_data[1]),
        name="tiny-intent",
        version="1",
        task="intent",
        out_dir=out,
        config=tiny_config(),
        signing_key=signing_key,
    )
    return out


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may tamper with."""
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dest)
    return dest


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server (JetStream) on a free port, for the control-plane tests."""

    from kefu.natsserver import NatsServer

    with NatsServer(tmp_path / "nats") as srv:
        yield srv


@pytest.fixture
def ops_key(tmp_path: Path) -> SigningKey:
    """The operators' signing key (bundles the control plane publishes)."""
    return generate_keypair(tmp_path / "keys", "ops")


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[SecuredNats]:
    """A nats-server with exactly the users ``kefu up`` creates (least-privilege node users)."""
    from cp_support import secured_nats_at

    secured = secured_nats_at(tmp_path / "nats-secured")
    with secured.server:
        yield secured


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    """A real node on loopback port 0 with metrics: the demo tenant and ``acme`` (key
    ``acme-key``), SQLite sessions under ``tmp_path/data``."""
    from support.grpc_node import node_options, second_tenant

    from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
    from kefu.node.serving.server import Node

    acme = second_tenant(tmp_path, "acme", "acme-key")
    opts = node_options(
        tmp_path / "data",
        metrics_listen="127.0.0.1:0",
        tenant_configs=[DEMO_TENANT_CONFIG, acme],
    )
    async with Node(opts) as n:
        yield n


@pytest.fixture
async def stub(node: Node) -> AsyncIterator[KefuNodeStub]:
    """A gRPC stub to :func:`node`."""
    from support.grpc_node import stub_to

    async with stub_to(node) as s:
        yield s
