"""Cross-reference checks of a tenant config: what is well-typed but does not fit together.

Pydantic validates each section on its own; this module checks the config as a whole —
duplicates, scenarios naming unknown intents or templates, KB scopes no scenario uses, session
policy overrides for unknown scenarios, a missing soothing prefix, the flows' references — and
returns every problem with its location, so one load reports all of them with their lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches
from typing import Any

from kefu.config.flows import flow_problems
from kefu.config.tenant import BUILTIN_ENTITY_TYPES, LANGUAGES, TenantConfig
from kefu.config.yamlsource import Problem

__all__ = ["reference_problems"]


def _duplicates(items: Iterable[tuple[Any, str]], what: str) -> list[Problem]:
    seen: dict[str, Any] = {}
    out = []
    for loc, key in items:
        if key in seen:
            out.append(Problem(loc=loc, message=f"duplicate {what} {key!r}"))
        else:
            seen[key] = loc
    return out


def _unknown(loc: Any, what: str, name: str, known: Iterable[str]) -> Problem:
    known = sorted(known)
    hint = get_close_matches(name, known, n=1)
    tail = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(known) or 'none'})"
    return Problem(loc=loc, message=f"unknown {what} {name!r}{tail}")


def reference_problems(cfg: TenantConfig) -> list[Problem]:
    """Every cross-reference problem of ``cfg`` (empty = valid)."""
    p: list[Problem] = []
    langs = cfg.languages.supported
    if cfg.languages.default not in langs:
        p.append(Problem(loc=("languages", "default"), message="default is not in supported"))
    p += _duplicates(((("languages", "supported", i), x) for i, x in enumerate(langs)), "language")
    p += _duplicates(
        ((("api_keys", i, "id"), k.id) for i, k in enumerate(cfg.api_keys)), "api key id"
    )
    p += _duplicates(
        ((("api_keys", i, "sha256"), k.sha256) for i, k in enumerate(cfg.api_keys)), "key hash"
    )

    intents = set(cfg.intent_labels)
    sentiments = cfg.models.sentiment.labels
    if sentiments and "negative" not in sentiments:
        p.append(
            Problem(
                loc=("models", "sentiment", "labels"),
                message="the soothing strategy needs a 'negative' sentiment label",
            )
        )

    # entities
    ent = cfg.entities
    p += _duplicates(
        ((("entities", "custom_types", i), t) for i, t in enumerate(ent.custom_types)),
        "entity type",
    )
    for i, t in enumerate(ent.custom_types):
        if t in BUILTIN_ENTITY_TYPES:
            p.append(Problem(loc=("entities", "custom_types", i), message=f"{t!r} is built in"))
    named: list[tuple[Any, str]] = []
    for kind in ("patterns", "lookups"):
        for i, item in enumerate(getattr(ent, kind)):
            named.append((("entities", kind, i, "id"), item.id))
            if item.type not in ent.types:
                p.append(
                    _unknown(("entities", kind, i, "type"), "entity type", item.type, ent.types)
                )
    p += _duplicates(named, "entity pattern/lookup id")
    forms: dict[str, tuple[str, str]] = {}  # casefolded surface form → (type, canonical)
    for i, table in enumerate(ent.lookups):
        for canonical, aliases in table.values.items():
            for form in (canonical, *aliases):
                prev = forms.setdefault(form.casefold(), (table.type, canonical))
                if prev != (table.type, canonical):
                    p.append(
                        Problem(
                            loc=("entities", "lookups", i, "values", canonical),
                            message=f"{form!r} already stands for {prev[0]} {prev[1]!r}",
                        )
                    )

    # knowledge base
    kb = cfg.kb
    p += _duplicates(
        ((("kb", "entries", i, "id"), e.id) for i, e in enumerate(kb.entries)), "entry id"
    )
    seen_q: dict[str, str] = {}
    for i, e in enumerate(kb.entries):
        for j, scope in enumerate(e.scopes):
            if scope != "*" and scope not in kb.scopes:
                p.append(_unknown(("kb", "entries", i, "scopes", j), "KB scope", scope, kb.scopes))
        for lang in langs:
            if not e.questions.get(lang):
                p.append(
                    Problem(
                        loc=("kb", "entries", i, "questions"),
                        message=f"no {lang} question (every supported language needs one)",
                    )
                )
        for lang in LANGUAGES:
            for j, q in enumerate(e.questions.get(lang)):
                norm = " ".join(q.casefold().split())
                other = seen_q.setdefault(norm, e.id)
                if other != e.id:
                    p.append(
                        Problem(
                            loc=("kb", "entries", i, "questions", lang, j),
                            message=f"question {q!r} is also asked by entry {other!r}",
                        )
                    )

    # scenarios
    p += _duplicates(
        ((("scenarios", i, "id"), s.id) for i, s in enumerate(cfg.scenarios)), "scenario id"
    )
    fallbacks = [i for i, s in enumerate(cfg.scenarios) if s.fallback]
    if not fallbacks:
        p.append(Problem(loc=("scenarios",), message="no scenario has 'fallback: true'"))
    for i in fallbacks[1:]:
        p.append(Problem(loc=("scenarios", i, "fallback"), message="only one fallback scenario"))
    for i, s in enumerate(cfg.scenarios):
        at = ("scenarios", i)
        if not s.fallback and s.match.is_empty():
            p.append(Problem(loc=(*at, "match"), message="no selection rule and not the fallback"))
        own = set(s.models.intent.labels) if s.models.intent else set()
        for field in ("intents", "recent_intents"):
            for j, name in enumerate(getattr(s.match, field)):
                if intents and name not in intents:
                    p.append(_unknown((*at, "match", field, j), "intent", name, intents))
        for j, scope in enumerate(s.kb_scopes):
            if scope not in kb.scopes:
                p.append(_unknown((*at, "kb_scopes", j), "KB scope", scope, kb.scopes))
        for intent, tid in s.templates.items():
            if intents and intent not in intents | own:
                p.append(_unknown((*at, "templates", intent), "intent", intent, intents | own))
            if tid not in cfg.templates:
                p.append(_unknown((*at, "templates", intent), "template", tid, cfg.templates))
        keywords = s.match.keywords
        for lang in langs:
            if keywords.all() and not keywords.get(lang):
                p.append(Problem(loc=(*at, "match", "keywords"), message=f"no {lang} keywords"))

    # session policy
    ids = {s.id for s in cfg.scenarios}
    for sid in cfg.session_policy.overrides:
        if sid not in ids:
            p.append(_unknown(("session_policy", "overrides", sid), "scenario", sid, ids))

    # soothing
    for lang in langs:
        if not cfg.soothing.prefixes.get(lang):
            p.append(Problem(loc=("soothing", "prefixes"), message=f"no {lang} prefix"))
    p += flow_problems(cfg)
    return p
