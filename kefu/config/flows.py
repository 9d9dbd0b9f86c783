"""Tenant config for task flows: back-end integrations, plugins and multi-turn flows.

A **flow** finishes a task over several turns: it starts on one of its ``intents``, fills its
``slots`` (from entities in the customer's words, remembered session slots, or the whole answer
for ``text`` slots), validates them (optionally with a ``check`` plugin: a back end that says
"not found" makes the bot say so and ask again), asks for ``confirm``-ation before any
state-changing action, calls its ``action`` plugin and replies with the ``success`` template
filled with slots and plugin outputs (or a ``rejected`` template for a business refusal such as
"already shipped"). ``then: handoff`` hands the session to a human afterwards.

A **plugin** is an HTTP call declared here (method, path template on an ``integration``'s base
URL, JSON body template, output mapping by dotted path — ``{lang}`` in a path picks the
customer's language — timeout, retries for idempotent calls only, circuit breaker) or a Python
plugin registered under the ``kefu.plugins`` entry-point group.

An **integration** is a back-end base URL (``base_url_env`` overrides it from the environment)
with its auth: a *secret reference*, resolved by the node at start (``KEFU_SECRET_<NAME>`` or
``<data-dir>/secrets/<name>``), never written into the config or the logs.

Cross-references (unknown slot, plugin, template, intent, integration) are reported by
:func:`flow_problems` with their location, so :func:`kefu.config.load_tenant_config` rejects
the file with the line.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from difflib import get_close_matches
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from kefu.config.yamlsource import Problem

__all__ = [
    "SLOT_KINDS",
    "CircuitSpec",
    "FlowNames",
    "FlowSpec",
    "Integration",
    "PluginSpec",
    "SecretRef",
    "SlotSpec",
    "flow_problems",
    "placeholders_of",
]

_IDENT = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_SLOT = re.compile(r"[a-z][a-z0-9_]{0,63}")
_URL = re.compile(r"https?://[^\s/]+(?:/[^\s]*)?")
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Slot kinds beyond entity types: free text (an address, an invoice title) and a choice.
SLOT_KINDS = ("text", "choice")


def _ident(v: str) -> str:
    if not _IDENT.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid id (lowercase letters, digits, '_', '-', '.')")
    return v


def _slot_name(v: str) -> str:
    if not _SLOT.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid slot name (lowercase letters, digits, '_')")
    return v


def _url(v: str) -> str:
    if not _URL.fullmatch(v):
        raise ValueError(f"{v!r} is not an http(s) URL")
    return v.rstrip("/")


Ident = Annotated[str, AfterValidator(_ident)]
SlotName = Annotated[str, AfterValidator(_slot_name)]
Seconds = Annotated[float, Field(gt=0, le=120)]


def placeholders_of(text: str) -> list[str]:
    """``{name}`` fields of a template string, in order (malformed → ValueError)."""
    out: list[str] = []
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None and name not in out:
            if not (name.isidentifier() and name.isascii()):
                raise ValueError(f"placeholder {{{name}}} in {text!r} is not an identifier")
            out.append(name)
    return out


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Auth from a named secret: ``<header>: <scheme> <secret value>``."""

    secret: SlotName
    header: str = "Authorization"
    scheme: str = "Bearer"


class Integration(_Model):
    base_url: Annotated[str, AfterValidator(_url)]
    base_url_env: str | None = None  # environment variable that overrides base_url
    auth: SecretRef | None = None
    headers: dict[str, str] = Field(default_factory=dict)  # fixed, non-secret headers
    timeout_seconds: Seconds = 3.0


class CircuitSpec(_Model):
    """Open after ``failures`` failed calls in a row; try again after ``reset_seconds``."""

    failures: Annotated[int, Field(ge=1)] = 5
    reset_seconds: Seconds = 30.0


class PluginSpec(_Model):
    id: Ident
    kind: Literal["http", "python"] = "http"
    # http
    integration: Ident | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str = "/"
    body: dict[str, str] = Field(default_factory=dict)  # JSON field → template "{slot}"
    # python: the name of an entry point in the ``kefu.plugins`` group
    entry_point: str | None = None
    # both
    outputs: dict[SlotName, str] = Field(default_factory=dict)  # name → dotted path
    idempotent: bool | None = None  # default: GET is, the others are not
    timeout_seconds: Seconds | None = None  # default: the integration's
    retries: Annotated[int, Field(ge=0, le=5)] = 2  # only used when idempotent
    backoff_seconds: Annotated[float, Field(ge=0, le=10)] = 0.1
    circuit: CircuitSpec = CircuitSpec()

    @model_validator(mode="after")
    def _shape(self) -> PluginSpec:
        if self.kind == "http" and self.integration is None:
            raise ValueError("an http plugin needs an 'integration'")
        if self.kind == "python" and not self.entry_point:
            raise ValueError("a python plugin needs an 'entry_point'")
        placeholders_of(self.path)
        for v in self.body.values():
            placeholders_of(v)
        return self

    @property
    def is_idempotent(self) -> bool:
        if self.idempotent is not None:
            return self.idempotent
        return self.kind == "http" and self.method == "GET"

    @property
    def changes_state(self) -> bool:
        """An HTTP write method, or a Python plugin not declared idempotent."""
        if self.kind == "http":
            return self.method in _STATE_CHANGING
        return self.idempotent is not True

    @property
    def inputs(self) -> list[str]:
        names = placeholders_of(self.path)
        for v in self.body.values():
            names += [n for n in placeholders_of(v) if n not in names]
        return names


class SlotSpec(_Model):
    """One piece of information a flow needs.

    ``type`` is an entity type (filled from entities found in the customer's words, and from
    the session's memory of earlier turns) or ``text`` (the whole answer to the prompt) or
    ``choice`` (one of ``choices``, matched by its words).
    """

    name: SlotName
    type: Ident
    prompt: Ident  # template asking for it
    check: Ident | None = None  # plugin validating it; "not found" → invalid
    invalid: Ident | None = None  # template when invalid (default: a built-in text)
    remember: bool = True  # reuse a value the customer gave earlier in the session
    min_length: Annotated[int, Field(ge=1)] = 1
    max_length: Annotated[int, Field(ge=1, le=500)] = 200
    choices: dict[SlotName, tuple[str, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _choices(self) -> SlotSpec:
        if (self.type == "choice") != bool(self.choices):
            raise ValueError("'choices' is required for type 'choice' and only allowed there")
        return self


class FlowNames(_Model):
    zh: Annotated[str, Field(min_length=1)]
    en: Annotated[str, Field(min_length=1)]

    def get(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh


class FlowSpec(_Model):
    id: Ident
    names: FlowNames  # "取消订单" / "order cancellation", used in built-in texts
    intents: tuple[Ident, ...] = Field(min_length=1)
    # The scenarios (business lines) the flow serves; empty = any. A turn routed elsewhere
    # does not start it.
    scenarios: tuple[Ident, ...] = ()
    # Answer a how-to question from the knowledge base instead of starting the flow, unless
    # the customer asks for it ("我要…", "I want …") or gives a slot value.
    kb_first: bool = False
    # A message that is little more than an entity of this type (a bare order number, with no
    # flow open) starts this flow.
    entity_trigger: Ident | None = None
    slots: tuple[SlotSpec, ...] = ()
    confirm: Ident | None = None  # template: "cancel order {order_number}? yes/no"
    declined: Ident | None = None  # template after "no" (default: a built-in text)
    action: Ident  # plugin
    success: Ident  # template filled with slots and plugin outputs
    rejected: dict[str, Ident] = Field(default_factory=dict)  # back-end code ("*") → template
    failure: Ident | None = None  # template when the back end fails (default: built-in)
    then: Literal["end", "handoff"] = "end"


def _unknown(loc: Any, what: str, name: str, known: Iterable[str]) -> Problem:
    ks = sorted(known)
    hint = get_close_matches(name, ks, n=1)
    tail = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(ks) or 'none'})"
    return Problem(loc=loc, message=f"unknown {what} {name!r}{tail}")


def _inputs(pl: PluginSpec, i: int, flow: str, known: set[str]) -> list[Problem]:
    """Plugin inputs the flow calling it cannot supply, reported where the plugin names them."""
    out = []
    for name in pl.inputs:
        if name in known:
            continue
        loc: tuple[Any, ...] = ("plugins", i, "path")
        for key, value in pl.body.items():
            if name in placeholders_of(value):
                loc = ("plugins", i, "body", key)
        hint = get_close_matches(name, sorted(known), n=1)
        tail = f"; did you mean {hint[0]!r}?" if hint else ""
        out.append(
            Problem(
                loc=loc,
                message=f"unknown slot {name!r}: flow {flow!r} calls plugin {pl.id!r} but has no "
                f"such slot or earlier output{tail}",
            )
        )
    return out


def flow_problems(cfg: Any) -> list[Problem]:
    """Cross-reference problems of integrations, plugins and flows in a ``TenantConfig``."""
    p: list[Problem] = []
    plugins: dict[str, PluginSpec] = {}
    index: dict[str, int] = {}
    for i, pl in enumerate(cfg.plugins):
        index.setdefault(pl.id, i)
        if pl.id in plugins:
            p.append(Problem(loc=("plugins", i, "id"), message=f"duplicate plugin id {pl.id!r}"))
        plugins[pl.id] = pl
        if pl.kind == "http" and pl.integration not in cfg.integrations:
            p.append(
                _unknown(
                    ("plugins", i, "integration"),
                    "integration",
                    str(pl.integration),
                    cfg.integrations,
                )
            )
    templates = cfg.templates
    intents = set(cfg.intent_labels)
    entity_types = set(cfg.entities.types)
    seen_intents: dict[str, str] = {}
    scenario_ids = {sc.id for sc in cfg.scenarios}
    triggers: dict[str, str] = {}
    ids: set[str] = set()
    for i, f in enumerate(cfg.flows):
        at: tuple[Any, ...] = ("flows", i)
        if f.id in ids:
            p.append(Problem(loc=(*at, "id"), message=f"duplicate flow id {f.id!r}"))
        ids.add(f.id)
        for j, intent in enumerate(f.intents):
            if intents and intent not in intents:
                p.append(_unknown((*at, "intents", j), "intent", intent, intents))
            if intent in seen_intents:
                p.append(
                    Problem(
                        loc=(*at, "intents", j),
                        message=f"intent {intent!r} already starts flow {seen_intents[intent]!r}",
                    )
                )
            seen_intents.setdefault(intent, f.id)
        for j, sid in enumerate(f.scenarios):
            if sid not in scenario_ids:
                p.append(_unknown((*at, "scenarios", j), "scenario", sid, scenario_ids))
        if f.entity_trigger is not None:
            if f.entity_trigger not in entity_types:
                p.append(
                    _unknown((*at, "entity_trigger"), "entity type", f.entity_trigger, entity_types)
                )
            if f.entity_trigger in triggers:
                p.append(
                    Problem(
                        loc=(*at, "entity_trigger"),
                        message=f"entity {f.entity_trigger!r} already starts flow "
                        f"{triggers[f.entity_trigger]!r}",
                    )
                )
            triggers.setdefault(f.entity_trigger, f.id)
        known_values: set[str] = set()
        for j, s in enumerate(f.slots):
            sat = (*at, "slots", j)
            if s.type not in entity_types and s.type not in SLOT_KINDS:
                p.append(
                    _unknown((*sat, "type"), "slot type", s.type, entity_types | set(SLOT_KINDS))
                )
            for key in ("prompt", "invalid"):
                tid = getattr(s, key)
                if tid is not None and tid not in templates:
                    p.append(_unknown((*sat, key), "template", tid, templates))
            known_values.add(s.name)
            if s.check is not None:
                pl = plugins.get(s.check)
                if pl is None:
                    p.append(_unknown((*sat, "check"), "plugin", s.check, plugins))
                else:
                    p += _inputs(pl, index[pl.id], f.id, known_values)
                    known_values |= set(pl.outputs)
        act = plugins.get(f.action)
        if act is None:
            p.append(_unknown((*at, "action"), "plugin", f.action, plugins))
        else:
            p += _inputs(act, index[act.id], f.id, known_values)
            if act.changes_state and f.confirm is None:
                p.append(
                    Problem(
                        loc=(*at, "confirm"),
                        message=f"plugin {act.id!r} changes state: the flow needs a 'confirm' "
                        "template",
                    )
                )
        before_action = set(known_values)
        after_action = known_values | (set(act.outputs) if act else set())
        checks: list[tuple[tuple[Any, ...], str | None, set[str]]] = [
            ((*at, "confirm"), f.confirm, before_action),
            ((*at, "declined"), f.declined, before_action),
            ((*at, "success"), f.success, after_action),
            ((*at, "failure"), f.failure, before_action),
        ]
        checks += [
            ((*at, "rejected", code), tid, before_action) for code, tid in f.rejected.items()
        ]
        checks += [((*at, "slots", j, "prompt"), s.prompt, set()) for j, s in enumerate(f.slots)]
        checks += [
            ((*at, "slots", j, "invalid"), s.invalid, {s.name}) for j, s in enumerate(f.slots)
        ]
        for loc, tid, allowed in checks:
            if tid is None:
                continue
            if tid not in templates:
                if loc[-1] not in ("prompt", "invalid"):  # reported above
                    p.append(_unknown(loc, "template", tid, templates))
                continue
            for name in sorted(templates[tid].placeholders):
                if name not in allowed:
                    p.append(
                        Problem(
                            loc=loc,
                            message=f"template {tid!r} uses {{{name}}}, which is not a slot or "
                            f"plugin output available here (available: "
                            f"{', '.join(sorted(allowed)) or 'none'})",
                        )
                    )
    return p
