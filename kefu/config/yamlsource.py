"""YAML that remembers where everything came from.

Config files are written by people, so a validation error must say *where*: file, line and
field (``tenants/demo-shop.yaml:212: field 'scenarios[2].kb_scopes[0]': ...``). PyYAML's
plain ``safe_load`` throws the positions away, so :func:`load_yaml` composes the node tree
with the safe loader and builds the Python values itself, recording the 1-based line of every
mapping key and sequence item under its location tuple (``("scenarios", 2, "kb_scopes")``).

It is also stricter than ``safe_load``: a duplicate key is an error (PyYAML silently keeps the
last one, which hides copy-paste mistakes), syntax errors and non-UTF-8 bytes are reported
with their line, and only one document per file is accepted.

:class:`YamlDocument` turns a location from any validator (pydantic's ``loc`` included) into a
line and a dotted field path, and builds the :class:`~kefu.errors.ConfigError`;
:meth:`YamlDocument.validate` runs a pydantic model over the data and reports every error
that way, in words (unknown fields come with a "did you mean").
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from kefu.errors import ConfigError

__all__ = [
    "MAX_DEPTH",
    "Loc",
    "Problem",
    "YamlDocument",
    "format_loc",
    "load_yaml",
    "parse_yaml",
]

#: A location inside a document: mapping keys and sequence indexes from the root.
Loc = tuple[Any, ...]
M = TypeVar("M", bound=BaseModel)

# A config file is small; anything beyond this many nodes is an alias bomb, not a config.
_MAX_NODES = 1_000_000
# Nesting deeper than this is an attack or a mistake, never a config (PyYAML composes
# recursively: unbounded depth would end in a RecursionError instead of a located error).
MAX_DEPTH = 64
# How many problems one error message lists before it says "and N more".
_MAX_LISTED = 30
_PLAIN_KEY = re.compile(r"^[^\s.\[\]\"']+$")


def format_loc(loc: Iterable[Any]) -> str:
    """``("scenarios", 2, "kb_scopes")`` → ``scenarios[2].kb_scopes``."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{str(part)!r}]"
    return out


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong with a config, at a location in the document."""

    loc: Loc = ()
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class YamlDocument:
    """Plain Python data (dicts, lists, scalars) plus the line of every key and item."""

    path: str = "<string>"
    data: Any = None
    lines: Mapping[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """Line of ``loc``, or of its nearest ancestor present in the file."""
        loc = tuple(loc)
        while True:
            if loc in self.lines:
                return self.lines[loc]
            if not loc:
                return None
            loc = loc[:-1]

    def resolve(self, loc: Iterable[Any]) -> tuple[Loc, int | None]:
        """Map a validator's location onto the document: (cleaned location, line).

        Validators may put entries in a location that are not data (pydantic's ``[key]``
        marker for dict keys, union member names); those are dropped unless they are the
        last entry, which names a field that is absent from the file (missing fields).
        """
        parts = list(loc)
        cur: Loc = ()
        node = self.data
        for i, part in enumerate(parts):
            if part == "[key]":
                continue
            child = _child(node, part)
            if child is _ABSENT and i != len(parts) - 1:
                continue
            node = child
            cur = (*cur, part)
        return cur, self.line_of(cur)

    def validate(self, model: type[M]) -> M:
        """``model.model_validate(data)``; every pydantic error becomes a located Problem."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            problems = [_problem(e, model) for e in exc.errors()]
            raise self.problems_error(problems) from exc

    def error(self, message: str, loc: Iterable[Any] = ()) -> ConfigError:
        """A ConfigError for one problem at ``loc``."""
        clean, line = self.resolve(loc)
        return ConfigError(message, path=self.path, line=line, field=format_loc(clean) or None)

    def problems_error(self, problems: Sequence[Problem]) -> ConfigError:
        """One ConfigError for all ``problems``, ordered by line.

        ``path``/``line``/``field`` of the error are those of the first problem; its message
        lists every further problem on its own line, each with file, line and field.
        """
        if not problems:
            raise ValueError("problems_error needs at least one problem")
        located = []
        for p in problems:
            clean, line = self.resolve(p.loc)
            located.append((line if line is not None else 0, format_loc(clean), p.message))
        located.sort(key=lambda t: t[0])
        line0, field0, message = located[0]
        rest = located[1:]
        if rest:
            lines = [message, f"({len(rest)} more problem{'s' if len(rest) > 1 else ''}:)"]
            for line, fld, msg in rest[:_MAX_LISTED]:
                where = f"{self.path}:{line}: " if line else f"{self.path}: "
                if fld:
                    where += f"field '{fld}': "
                lines.append(f"  {where}{msg}")
            if len(rest) > _MAX_LISTED:
                lines.append(f"  ... and {len(rest) - _MAX_LISTED} more")
            message = "\n".join(lines)
        return ConfigError(message, path=self.path, line=line0 or None, field=field0 or None)


_ABSENT = object()


def _child(node: Any, part: Any) -> Any:
    """``node[part]`` when it exists in the data, else ``_ABSENT``."""
    if isinstance(node, Mapping):
        try:
            return node.get(part, _ABSENT)
        except TypeError:  # unhashable part
            return _ABSENT
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _ABSENT


def _problem(err: Any, model: type[BaseModel]) -> Problem:
    """A pydantic error dict in words a config author understands."""
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        hint = get_close_matches(str(loc[-1]), known or [], n=1)
        tail = f"; did you mean {hint[0]!r}?" if hint else ""
        if known and not hint:
            tail = f" (allowed: {', '.join(known)})"
        return Problem(loc=loc, message=f"unknown field {loc[-1]!r}{tail}")
    if kind == "missing":
        return Problem(loc=loc, message="required field is missing")
    if kind in ("value_error", "assertion_error"):
        message = str(err.get("ctx", {}).get("error", err["msg"]))
    else:
        shown = repr(err.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        message = f"{err['msg']} (got {shown})"
    if "[key]" in loc:
        message = f"invalid key: {message}"
    return Problem(loc=loc, message=message)


def _unwrap(tp: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` → ``X``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str] | None:
    """Field names of the model found at ``loc`` under ``model`` (for "did you mean")."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
        elif typing.get_origin(tp) in (tuple, list):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return None


def load_yaml(path: str | Path) -> YamlDocument:
    """Read and parse one YAML file; every failure is a ConfigError naming file and line."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", path=path) from exc
    return parse_yaml(raw, source=str(path))


def parse_yaml(text: str | bytes, *, source: str = "<string>") -> YamlDocument:
    """Parse YAML text (or UTF-8 bytes); ``source`` names it in errors."""
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise ConfigError(
                f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                "(save the file as UTF-8)",
                path=source,
                line=line,
            ) from exc
    text = text.removeprefix("\ufeff")
    try:
        loader = _DepthLimitedLoader(text, source)  # the reader checks forbidden characters
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, source) from exc
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(
            f"character U+{exc.character:04X} is not allowed in YAML", path=source, line=line
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=source) from exc
    try:
        if root is None:
            raise ConfigError("the file is empty", path=source, line=1)
        builder = _Builder(loader, source)
        data = builder.build(root, ())
        return YamlDocument(path=source, data=data, lines=builder.lines)
    finally:
        loader.dispose()


class _DepthLimitedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting deeper than :data:`MAX_DEPTH` with a located error."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self._source = source
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"nested more than {MAX_DEPTH} levels deep / 嵌套层级超过 {MAX_DEPTH}",
                    path=self._source,
                    line=mark.line + 1,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _syntax_error(exc: yaml.MarkedYAMLError, source: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    parts = [p for p in (exc.context, exc.problem) if p]
    if exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
        parts[0:1] = [f"{exc.context} (started on line {exc.context_mark.line + 1})"]
    message = "YAML syntax error: " + ", ".join(parts) if parts else "YAML syntax error"
    col = f" (column {mark.column + 1})" if mark is not None else ""
    return ConfigError(message + col, path=source, line=None if mark is None else mark.line + 1)


class _Builder:
    """Build Python values from composed nodes, recording lines and refusing duplicates."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[Loc, int] = {}
        self._stack: set[int] = set()
        self._own: dict[int, set[int]] = {}  # a mapping's own pairs, before merge-flattening
        self._count = 0

    def _fail(self, message: str, node: yaml.Node) -> ConfigError:
        return ConfigError(message, path=self.source, line=node.start_mark.line + 1)

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise self._fail("document too large (alias expansion?)", node)
        if len(loc) > MAX_DEPTH:  # aliases can nest composed nodes deeper still
            raise self._fail(f"nested more than {MAX_DEPTH} levels deep (through aliases)", node)
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if id(node) in self._stack:
            raise self._fail("recursive alias: a node contains itself", node)
        self._stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                out_list = []
                for i, item in enumerate(node.value):
                    self.lines[(*loc, i)] = item.start_mark.line + 1
                    out_list.append(self.build(item, (*loc, i)))
                return out_list
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
        finally:
            self._stack.discard(id(node))
        raise self._fail(f"unsupported YAML node {node.tag}", node)

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            raise self._fail(
                f"invalid {node.tag.rsplit(':', 1)[-1]} value {node.value!r}", node
            ) from exc

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        own = self._own.get(id(node))
        if own is None:  # first visit (an aliased mapping is visited again, already flat)
            own = self._own[id(node)] = {id(pair) for pair in node.value}
            try:
                self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
            except yaml.MarkedYAMLError as exc:
                raise _syntax_error(exc, self.source) from exc
        out: dict[Any, Any] = {}
        explicit: dict[Any, int] = {}
        for pair in node.value:
            key_node, value_node = pair
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._fail("mapping keys must be plain scalars", key_node)
            key = self._scalar(key_node)
            try:
                hash(key)
            except TypeError as exc:
                raise self._fail(f"unusable mapping key {key_node.value!r}", key_node) from exc
            line = key_node.start_mark.line + 1
            # Merged-in keys may be overridden silently (that is what `<<` is for).
            if id(pair) in own:
                if key in explicit:
                    raise ConfigError(
                        f"duplicate key {key!r} (first defined on line {explicit[key]})",
                        path=self.source,
                        line=line,
                        field=format_loc((*loc, key)),
                    )
                explicit[key] = line
            self.lines[(*loc, key)] = line
            out[key] = self.build(value_node, (*loc, key))
        return out
