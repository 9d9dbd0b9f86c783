"""Layers point inward: the node's pure core imports no gRPC, NATS, onnxruntime or SQLite,
and a node never needs torch."""

from __future__ import annotations

import subprocess
import sys

PURE = [
    "kefu.node.dialog.scenario",
    "kefu.node.dialog.reply",
    "kefu.node.dialog.reply_text",
    "kefu.node.dialog.knowledge",
    "kefu.node.dialog.kb_entries",
    "kefu.node.nlu.entities",
    "kefu.node.nlu.entity_patterns",
    "kefu.node.nlu.entity_values",
    "kefu.node.nlu.language",
    "kefu.node.serving.admission",
    "kefu.node.nlu.redaction",
    "kefu.node.sessions.store",
    "kefu.node.sessions.session_rules",
    "kefu.node.dialog.flow",
    "kefu.node.dialog.flow_state",
    "kefu.node.dialog.flow_words",
    "kefu.node.dialog.plugin_api",
    "kefu.node.dialog.handoff",
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
    assert "torch" not in loaded_after(["kefu.node.serving.server", "kefu.node.cli"])
