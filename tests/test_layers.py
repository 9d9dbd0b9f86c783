"""Layers point inward: the node's pure core imports no gRPC, NATS, onnxruntime or SQLite,
and a node never needs torch."""

from __future__ import annotations

import subprocess
import sys

PURE = [
    "kefu.node.scenario",
    "kefu.node.reply",
    "kefu.node.reply_text",
    "kefu.node.knowledge",
    "kefu.node.kb_entries",
    "kefu.node.entities",
    "kefu.node.entity_patterns",
    "kefu.node.entity_values",
    "kefu.node.language",
    "kefu.node.admission",
    "kefu.node.redaction",
    "kefu.node.sessions",
    "kefu.node.session_rules",
    "kefu.node.flow",
    "kefu.node.flow_state",
    "kefu.node.flow_words",
    "kefu.node.plugin_api",
    "kefu.node.handoff",
]


def loaded_after(imports: list[str]) -> set[str]:
    code = (
        "import sys\n" + "".join(f"import {m}\n" for m in imports) + "print(' '.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_pure_core_imports_no_io_libraries() -> None:
    assert not loaded_after(PURE) & {"grpc", "nats", "onnxruntime", "sqlite3", "torch", "aiohttp"}


def test_node_server_never_imports_torch() -> None:
    assert "torch" not in loaded_after(["kefu.node.server", "kefu.node.cli"])
