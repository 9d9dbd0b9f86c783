"""The README is a front door and docs/ holds the rest: keep the links between them true.

Every relative link in README.md and docs/*.md must name an existing file, and a ``#anchor``
must name a heading of the target page (GitHub's slugs, Chinese headings included). The README
stays small (≤ 12 KB) and every docs page is reachable from it, so no page is orphaned.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12 * 1024

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
_CODE_SPAN = re.compile(r"`([^`\s]+)`")
# A `path` in the docs that starts with one of these folders names a file of the repository.
_TOP_FOLDERS = "node control_plane models tui packaging kefu tests benchmarks scripts proto docs"
SOURCE_DIRS = tuple(f"{d}/" for d in _TOP_FOLDERS.split())
INSTALLED_AS = {f"kefu/{pkg}": pkg for pkg in ("models", "node", "control_plane", "tui")}
GENERATED = {"kefu/_build_info.json"}  # written by packaging/build.sh, not in the checkout


def doc_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced and indented code blocks."""
    out: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence or line.startswith("    ") or line.startswith("\t"):
            continue
        out.append(line)
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed
    (letters of every script, digits, ``_`` and ``-`` kept), each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    kept = [
        ch for ch in text.lower() if ch in " -_" or unicodedata.category(ch)[0] in ("L", "M", "N")
    ]
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 … for repeated headings."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else _HEADING.match(line)
        if m is None:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links and images (code excluded)."""
    prose = "\n".join(_prose_lines(page.read_text(encoding="utf-8")))
    prose = _INLINE_CODE.sub("", prose)
    return [m.group(2) for m in _LINK.finditer(prose)] + [
        m.group(2) for m in _IMAGE.finditer(prose)
    ]


def broken_links(page: Path) -> list[str]:
    """Each relative link of ``page`` that names no file, or no heading of the file."""
    problems: list[str] = []
    for target in links(page):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file {dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


def missing_source_paths(page: Path, root: Path = ROOT) -> list[str]:
    """Each `folder/file` code span of ``page`` that names no file of the repository.

    Installed names are accepted too (`kefu/node/...` is `node/...`); `a.py::name` is checked
    as `a.py`; spans with placeholders (`<x>`, `*`, `{a,b}`) are not paths and are skipped."""
    missing: list[str] = []
    for span in _CODE_SPAN.findall(page.read_text(encoding="utf-8")):
        path = span.split("::")[0]
        if not path.startswith(SOURCE_DIRS) or re.search(r"[<*{]", path) or path in GENERATED:
            continue
        for installed, folder in INSTALLED_AS.items():
            if path == installed or path.startswith(installed + "/"):
                path = folder + path[len(installed) :]
        if not (root / path).exists():
            missing.append(span)
    return missing


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_source_path_named_exists(page: Path) -> None:
    """Code moves (issue 11 moves node/ into subpackages): the docs must follow it."""
    assert missing_source_paths(page) == []


def test_the_path_check_catches_a_moved_module(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "server.py").write_text("", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "`node/server.py` `kefu/node/server.py::Node` `node/gone.py` `<data-dir>/x` "
        "`node/*.py` `/etc/kefu/node.yaml`\n",
        encoding="utf-8",
    )
    assert missing_source_paths(page, root=tmp_path) == ["node/gone.py"]


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_readme_is_a_front_door() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    """Every docs page is linked from the README or from a page the README reaches."""

    def targets(page: Path) -> set[Path]:
        return {
            (page.parent / t.partition("#")[0]).resolve()
            for t in links(page)
            if not _EXTERNAL.match(t) and t.partition("#")[0]
        }

    reached: set[Path] = set()
    todo = [README.resolve()]
    while todo:
        page = todo.pop()
        for target in targets(page):
            if target.suffix == ".md" and target.is_file() and target not in reached:
                reached.add(target)
                todo.append(target)
    orphans = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in reached]
    assert orphans == []


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Configure / 配置", "configure--配置"),
        ("Joining a control plane / 加入控制平面", "joining-a-control-plane--加入控制平面"),
        (
            "Node load benchmark — throughput target missed, latency targets met",
            "node-load-benchmark--throughput-target-missed-latency-targets-met",
        ),
        ("Runtime loader (shared with the node)", "runtime-loader-shared-with-the-node"),
        ("The model pipeline (`kefu model ...`)", "the-model-pipeline-kefu-model-"),
        ("State layout (`kefu/wire.py`)", "state-layout-kefuwirepy"),
        (
            "`kefu-node` archive: size, cold start, memory",
            "kefu-node-archive-size-cold-start-memory",
        ),
        (
            "One file or one directory? Measured, then chosen",
            "one-file-or-one-directory-measured-then-chosen",
        ),
        ("The [demo](x.md) order_center", "the-demo-order_center"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_the_check_catches_broken_links_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# 概览 Overview\n\n## Same\n\n## Same\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n"
        "[ok](other.md) [ok](other.md#概览-overview) [ok](other.md#same-1) [ok](#title)\n"
        "[ok](https://example.com/x) `[in code](missing.md)`\n\n"
        "    [indented code](missing.md)\n\n"
        "```\n[fenced](missing.md)\n```\n"
        "[no file](missing.md) [no heading](other.md#same-2) [no\nheading](#nope)\n",
        encoding="utf-8",
    )
    assert [p.split(":")[0] for p in broken_links(page)] == [
        "missing.md",
        "other.md#same-2",
        "#nope",
    ]
