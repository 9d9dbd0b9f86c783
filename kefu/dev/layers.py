"""The layer contracts, checked by reading imports (``python -m kefu.dev.layers``).

``scripts/test.sh`` runs it right after ruff; ``tests/test_layers.py`` runs it too and proves
that a forbidden import makes it fail. It parses every module of the installed packages
(``kefu`` = kefu/, ``kefu.node`` = node/, ... as pyproject's ``package-dir`` maps them) and
checks, without importing anything:

* **pure core**: the modules in :data:`PURE` import (directly, or through any project module
  they import) none of :data:`IO_LIBRARIES`, and do no file I/O themselves (``open``,
  ``Path.read_text`` and friends);
* **services never import adapters** (:data:`SERVICES`, :data:`ADAPTERS`);
* **direction**: each rule of :data:`FORBIDDEN` — ``control_plane`` never imports ``node``,
  ``tui`` talks to the control plane only through ``tui.client``, ``models`` imports nothing of
  ``node``/``control_plane``, the shared ``kefu`` core imports no package built on it;
* **the gateway** (``kefu.node.gateway``) imports none of the node's internals: it reaches
  nodes only through their gRPC API (``kefu.v1``);
* **no import cycles** between project modules.

Imports under ``if TYPE_CHECKING:`` are not imports at run time and are ignored; imports inside
functions (the lazy ones) count. A pattern ``a.b.*`` matches ``a.b`` and everything below it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = ["FORBIDDEN", "IO_LIBRARIES", "PURE", "Violation", "check", "main"]

#: Where each package's sources live (pyproject.toml ``[tool.setuptools] package-dir``).
PACKAGE_DIRS = {
    "kefu": "kefu",
    "kefu.models": "models",
    "kefu.node": "node",
    "kefu.control_plane": "control_plane",
    "kefu.tui": "tui",
}

#: Generated code, not checked.
SKIP = ("kefu.v1.*_pb2*",)

IO_LIBRARIES = (
    "grpc",
    "nats",
    "sqlite3",
    "sqlite_utils",
    "onnxruntime",
    "aiohttp",
    "socket",
    "torch",
)

#: The pure core of each package: decisions and domain records, no I/O.
PURE = (
    "kefu.errors",
    "kefu.pki",
    "kefu.rotation",
    "kefu.wire",
    "kefu.wire_failover",
    "kefu.model_ref",
    "kefu.rollout",
    "kefu.canary_stats",
    "kefu.demo.customers",
    "kefu.node.nlu.language",
    "kefu.node.nlu.entities",
    "kefu.node.nlu.entity_patterns",
    "kefu.node.nlu.entity_values",
    "kefu.node.nlu.redaction",
    "kefu.node.nlu.predictions",
    "kefu.node.dialog.scenario",
    "kefu.node.dialog.reply",
    "kefu.node.dialog.reply_text",
    "kefu.node.dialog.knowledge",
    "kefu.node.dialog.kb_entries",
    "kefu.node.dialog.flow",
    "kefu.node.dialog.flow_state",
    "kefu.node.dialog.flow_words",
    "kefu.node.dialog.plugin_api",
    "kefu.node.dialog.handoff",
    "kefu.node.dialog.events",
    "kefu.node.dialog.split",
    "kefu.node.dialog.turns",
    "kefu.node.sessions.store",
    "kefu.node.sessions.session_rules",
    "kefu.node.sessions.sealing",
    "kefu.node.replication.records",
    "kefu.node.audit.chain",
    "kefu.node.serving.admission",
    "kefu.node.agent.reconcile",
    "kefu.node.agent.guard",
    "kefu.control_plane.desired",
    "kefu.control_plane.lease",
    "kefu.control_plane.rollout_plan",
    "kefu.control_plane.region_health",
    "kefu.control_plane.residency",
    "kefu.control_plane.canary",
    "kefu.control_plane.guard",
    "kefu.control_plane.policy_file",
    "kefu.models.gate",
    "kefu.node.gateway.routing",
    "kefu.node.gateway.answers",
    "kefu.node.gateway.identity",
    "kefu.node.gateway.traffic",
    "kefu.node.gateway.wechat",
    "kefu.node.gateway.wechat_crypto",
    "kefu.node.gateway.views",
    "kefu.node.gateway.tracing",
)

#: Services: orchestrate the core through seams; never reach for an adapter.
SERVICES = (
    "kefu.node.dialog.conversation",
    "kefu.node.dialog.tasks",
    "kefu.node.dialog.tenant",
    "kefu.node.gateway.conversations",
)

#: Adapters: gRPC, SQLite, onnxruntime, HTTP, NATS, processes, the command lines.
ADAPTERS = (
    "kefu.node.serving.server",
    "kefu.node.serving.grpc_api",
    "kefu.node.serving.grpc_messages",
    "kefu.node.serving.metrics",
    "kefu.node.serving.workers",
    "kefu.node.sessions.sqlite_store",
    "kefu.node.sessions.group_commit",
    "kefu.node.sessions.session_db",
    "kefu.node.replication.service",
    "kefu.node.audit.journal",
    "kefu.node.nlu.inference",
    "kefu.node.agent.*",
    "kefu.node.cli",
    "kefu.node.main",
    "kefu.node.bootstrap",
    "kefu.node.install",
    "kefu.models.runtime",
    "kefu.node.gateway.node_links",
    "kefu.node.gateway.region_routes",
    "kefu.node.gateway.http_api",
    "kefu.node.gateway.websocket",
    "kefu.node.gateway.wechat_http",
    "kefu.node.gateway.metrics",
    "kefu.node.gateway.app",
    "kefu.node.gateway.cli",
)

#: The shared core every package builds on (composition roots kefu.cli, kefu.up, kefu.dev and
#: the demo are not part of it).
SHARED = (
    "kefu",
    "kefu.errors",
    "kefu.wire",
    "kefu.wire_failover",
    "kefu.model_ref",
    "kefu.rollout",
    "kefu.canary_stats",
    "kefu.bus",
    "kefu.natsbus",
    "kefu.natsserver",
    "kefu.bundle",
    "kefu.keys",
    "kefu.lazy",
    "kefu.pki",
    "kefu.rotation",
    "kefu.certstore",
    "kefu.tls",
    "kefu.logformat",
    "kefu.tracing",
    "kefu.config.*",
    "kefu.v1.*",
)

#: (importer patterns, forbidden imported patterns, exceptions among the importers, why).
FORBIDDEN: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str], ...] = (
    (("kefu.control_plane.*",), ("kefu.node.*",), (), "control_plane never imports node"),
    (
        ("kefu.tui.*",),
        ("kefu.control_plane.*", "kefu.node.*"),
        ("kefu.tui.client",),
        "tui talks to the control plane only through tui.client",
    ),
    (
        ("kefu.models.*",),
        ("kefu.node.*", "kefu.control_plane.*", "kefu.tui.*"),
        (),
        "models imports nothing of node, control_plane or tui",
    ),
    (
        SHARED,
        ("kefu.node.*", "kefu.control_plane.*", "kefu.tui.*", "kefu.models.*", "kefu.dev.*"),
        (),
        "the shared kefu core imports no package built on it",
    ),
    (
        ("kefu.node.gateway.*",),
        (
            "kefu.node.dialog.*",
            "kefu.node.nlu.*",
            "kefu.node.sessions.*",
            "kefu.node.serving.*",
            "kefu.node.agent.*",
            "kefu.node.bootstrap",
            "kefu.node.tenants.*",
        ),
        (),
        "the gateway talks to nodes only through their gRPC API (kefu.v1)",
    ),
    (SERVICES, ADAPTERS, (), "services never import adapters"),
    (PURE, ADAPTERS + SERVICES, (), "the pure core imports no service or adapter"),
    (
        ("kefu.node.*", "kefu.control_plane.*", "kefu.models.*"),
        ("kefu.dev.*", "kefu.cli", "kefu.up", "kefu.demo.*"),
        (),
        "packages never import the developer tools or the composition roots",
    ),
)

#: Calls that read or write files.
FILE_IO_CALLS = {"open"}
FILE_IO_METHODS = {"read_text", "write_text", "read_bytes", "write_bytes"}


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.message}"


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    #: (imported module, line) — project modules resolved to the longest existing prefix.
    imports: list[tuple[str, int]] = field(default_factory=list)
    file_io: list[tuple[str, int]] = field(default_factory=list)


def matches(name: str, patterns: Iterable[str]) -> bool:
    for pat in patterns:
        if pat.endswith(".*") and (name == pat[:-2] or fnmatchcase(name, pat)):
            return True
        if fnmatchcase(name, pat):
            return True
    return False


def discover(root: Path) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package, rel in PACKAGE_DIRS.items():
        base = root / rel
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            # A folder mapped to another package (e.g. none below kefu/) is skipped by name.
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if matches(name, SKIP) or any(p.startswith(".") for p in parts):
                continue
            modules[name] = Module(name, path, is_package)
    return modules


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    for sub in ast.walk(child):
                        if hasattr(sub, "lineno"):
                            lines.add(sub.lineno)
    return lines


def _resolve(name: str, known: dict[str, Module]) -> str:
    """The longest prefix of ``name`` that is a project module (``kefu.a.b.X`` → ``kefu.a.b``)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in known:
            return cand
        parts.pop()
    return name


def parse(modules: dict[str, Module]) -> None:
    for mod in modules.values():
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), str(mod.path))
        skip = _type_checking_lines(tree)
        pkg = mod.name if mod.is_package else mod.name.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    mod.imports.append((_resolve(alias.name, modules), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    mod.imports.append(
                        (_resolve(full if full in modules else target, modules), node.lineno)
                    )
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in FILE_IO_CALLS:
                    mod.file_io.append((f"{func.id}()", node.lineno))
                elif isinstance(func, ast.Attribute) and func.attr in FILE_IO_METHODS:
                    mod.file_io.append((f".{func.attr}()", node.lineno))


def _cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = {
        name: sorted({imp for imp, _ in mod.imports if imp in modules and imp != name})
        for name, mod in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _io_path(modules: dict[str, Module], start: str) -> list[tuple[str, str, int]]:
    """Each I/O library reachable from ``start``: (library, importing module, line)."""
    seen = {start}
    todo = [start]
    hits: list[tuple[str, str, int]] = []
    while todo:
        name = todo.pop()
        for imp, line in modules[name].imports:
            top = imp.split(".")[0]
            if top in IO_LIBRARIES:
                hits.append((imp, name, line))
            elif imp in modules and imp not in seen:
                seen.add(imp)
                todo.append(imp)
    return hits


def check(root: Path) -> list[Violation]:
    """Every broken contract of the tree at ``root`` (empty: all hold)."""
    modules = discover(root)
    parse(modules)
    out: list[Violation] = []
    for name in sorted(modules):
        mod = modules[name]
        if matches(name, PURE):
            for lib, via, line in _io_path(modules, name):
                where = "" if via == name else f" (through {via}:{line})"
                out.append(
                    Violation(name, line if via == name else 0, f"pure core reaches {lib}{where}")
                )
            for call, line in mod.file_io:
                out.append(Violation(name, line, f"pure core does file I/O: {call}"))
        for importers, forbidden, exceptions, why in FORBIDDEN:
            if not matches(name, importers) or matches(name, exceptions):
                continue
            for imp, line in mod.imports:
                if imp != name and imp.startswith("kefu") and matches(imp, forbidden):
                    out.append(Violation(name, line, f"imports {imp}: {why}"))
    for cycle in _cycles(modules):
        out.append(Violation(cycle[0], 0, "import cycle: " + " -> ".join(cycle)))
    return sorted(set(out), key=lambda v: (v.module, v.line, v.message))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kefu.dev.layers", description=__doc__)
    parser.add_argument("--root", default=".", help="repository root (default: .)")
    args = parser.parse_args(argv)
    violations = check(Path(args.root))
    for v in violations:
        print(v, file=sys.stderr)
    if violations:
        print(f"layers: {len(violations)} broken contract(s)", file=sys.stderr)
        return 1
    print("layers: all contracts hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
