"""The tenant configuration: one YAML file per tenant, validated before a node uses it.

A tenant config says who the tenant is and how its customers are served: API key hashes,
which models play which role, languages, entity patterns, scenarios (how a message is routed,
which knowledge-base scopes and reply templates apply), templates, the knowledge base,
session policies per business line, rate limits and the soothing strategy.

Validation has two stages, and :func:`load_tenant_config` reports *all* problems of the
failing stage in one :class:`~kefu.errors.ConfigError` (sorted by line; the error's ``line``
and ``field`` are those of the first problem, the message lists the rest, each with file,
line and field):

1. structure (pydantic): types, ranges, required and unknown fields, identifiers, regexes
   that must compile, template placeholders that must be identifiers;
2. cross-references (:meth:`TenantConfig.reference_problems`): scenarios name existing
   templates, KB scopes and intents (intents from the intent model's ``labels`` when listed),
   ids are unique, exactly one fallback scenario, session-policy overrides name scenarios, ...

Scenario selection (implemented by ``kefu.node.dialog.scenario``): ``channels`` and ``user`` in
``match`` are *conditions* (each one given must hold); ``intents``, ``keywords``,
``entry_paths`` and ``recent_intents`` are *triggers* (any one suffices; none given = the
conditions alone select). Stronger evidence wins first (a confident intent beats a keyword),
then the higher ``priority``; the ``fallback`` scenario answers when none matches. Entry paths
are triggers, not conditions, so a customer asking 我的订单什么时候到 from the home page still
reaches logistics.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from kefu.config.flows import FlowSpec, Integration, PluginSpec
from kefu.model_ref import VersionRef, format_ref

__all__ = [
    "BUILTIN_ENTITY_TYPES",
    "CHANNELS",
    "LANGUAGES",
    "ApiKeyRecord",
    "EntityLookup",
    "EntityPattern",
    "EntitySettings",
    "HandoffConditions",
    "HandoffOverride",
    "KbEntry",
    "KnowledgeBase",
    "LanguageSettings",
    "LocalizedList",
    "LocalizedText",
    "ModelAssignments",
    "ModelRef",
    "RateLimits",
    "Scenario",
    "ScenarioMatch",
    "ScenarioModels",
    "SessionPolicies",
    "SessionPolicy",
    "SessionPolicyOverride",
    "Soothing",
    "Template",
    "TenantConfig",
    "TenantInfo",
    "TokenBucket",
    "generate_api_key",
    "hash_api_key",
]

Language = Literal["zh", "en"]
Channel = Literal["web", "app", "mini_program", "social"]

LANGUAGES: tuple[Language, ...] = ("zh", "en")
CHANNELS: tuple[Channel, ...] = ("web", "app", "mini_program", "social")
BUILTIN_ENTITY_TYPES = ("order_number", "tracking_number", "phone", "amount", "date", "email")

_IDENT = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# Tenant ids become directory names and NATS subject tokens: no dots, no underscores.
_TENANT_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_BUNDLE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # as kefu.bundle
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _ident(v: str) -> str:
    if not _IDENT.fullmatch(v):
        raise ValueError(
            f"{v!r} is not a valid id: use lowercase letters, digits, '_', '-' or '.', "
            "starting with a letter (at most 64 characters)"
        )
    return v


def _tenant_id(v: str) -> str:
    if not _TENANT_ID.fullmatch(v):
        raise ValueError(
            f"{v!r} is not a valid tenant id: use lowercase letters, digits and '-' "
            "(a slug like 'demo-shop', at most 63 characters)"
        )
    return v


def _bundle_name(v: str) -> str:
    if not _BUNDLE_NAME.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid model name (lowercase, digits, '.', '_', '-')")
    return v


def _sha256_hex(v: str) -> str:
    if not _SHA256_HEX.fullmatch(v):
        raise ValueError("must be the SHA-256 of the key: 64 lowercase hex digits")
    return v


def _non_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


Ident = Annotated[str, AfterValidator(_ident)]
Text = Annotated[str, AfterValidator(_non_blank)]


class _Model(BaseModel):
    # Unknown fields are typos until proven otherwise; configs are values, not mutable state.
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------- text


class LocalizedText(_Model):
    """One text in each language."""

    zh: Text
    en: Text

    def get(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh


class LocalizedList(_Model):
    """Lists of texts per language (keywords, question variants, prefixes)."""

    zh: tuple[Text, ...] = ()
    en: tuple[Text, ...] = ()

    def get(self, lang: str) -> tuple[str, ...]:
        return self.en if lang == "en" else self.zh

    def all(self) -> tuple[str, ...]:
        return self.zh + self.en


class Template(_Model):
    """A reply text per language; ``{name}`` fields are filled in at answer time."""

    zh: Text
    en: Text

    @field_validator("zh", "en")
    @classmethod
    def _placeholders_are_identifiers(cls, v: str) -> str:
        _placeholders(v)
        return v

    @model_validator(mode="after")
    def _same_placeholders(self) -> Template:
        zh, en = _placeholders(self.zh), _placeholders(self.en)
        if zh != en:
            raise ValueError(
                "zh and en use different placeholders: "
                f"zh {sorted(zh)}, en {sorted(en)} (both languages need the same fields)"
            )
        return self

    @property
    def placeholders(self) -> frozenset[str]:
        return _placeholders(self.zh)

    def render(self, lang: str, values: Mapping[str, object]) -> str:
        """Fill the placeholders; a missing value raises KeyError naming it."""
        return (self.en if lang == "en" else self.zh).format_map(values)


def _placeholders(text: str) -> frozenset[str]:
    names = set()
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(
            f"malformed placeholder in {text!r}: {exc} (write '{{{{' for a literal '{{')"
        ) from exc
    for _, name, _, conversion in parsed:
        if name is None:
            continue
        if not (name.isidentifier() and name.isascii()):
            raise ValueError(
                f"placeholder {{{name}}} in {text!r} is not an identifier "
                "(use names like {order_number})"
            )
        if conversion:
            raise ValueError(f"placeholder {{{name}!{conversion}}}: conversions are not allowed")
        names.add(name)
    return frozenset(names)


# -------------------------------------------------------------------------- tenant, keys


class TenantInfo(_Model):
    id: Annotated[str, AfterValidator(_tenant_id)]
    name: LocalizedText
    enabled: bool = True


KeyRole = Literal["channel", "admin", "agent"]


class ApiKeyRecord(_Model):
    """An API key as stored: only its SHA-256, never the key itself."""

    id: Ident
    sha256: Annotated[str, AfterValidator(_sha256_hex)]
    created_at: datetime
    revoked: bool = False
    note: str = ""
    # What the key may do (see proto/kefu/v1/node.proto): channel = conversations, admin =
    # also ListSessions, agent = the hand-off console. Default: all three.
    roles: tuple[KeyRole, ...] = Field(default=("channel", "admin", "agent"), min_length=1)


def hash_api_key(key: str) -> str:
    """Hex SHA-256 of an API key (keys are 256-bit random, so no slow KDF is needed)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key(prefix: str = "kefu_") -> str:
    """A new random API key (show it once, store only :func:`hash_api_key` of it)."""
    return prefix + secrets.token_urlsafe(32)


# -------------------------------------------------------------------------------- models


class ModelRef(_Model):
    """A model bundle by name; no version = the newest verified version in the store.

    Written as a mapping or as a string ``name`` / ``name@version``. ``labels``, when
    listed, are the classes the model predicts; scenarios are checked against them.
    """

    name: Annotated[str, AfterValidator(_bundle_name)]
    version: Text | None = None
    labels: tuple[Ident, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            name, sep, version = data.partition("@")
            return {"name": name, "version": version} if sep else {"name": name}
        return data

    @property
    def version_ref(self) -> VersionRef:
        return VersionRef(self.name, self.version or "")

    @property
    def ref(self) -> str:
        return format_ref(self.name, self.version)


class ModelAssignments(_Model):
    intent: ModelRef
    sentiment: ModelRef
    encoder: ModelRef | None = None  # sentence encoder for dense KB retrieval


class ScenarioModels(_Model):
    """Per-scenario model pins (a canary, a specialised classifier); unset = the tenant's."""

    intent: ModelRef | None = None
    sentiment: ModelRef | None = None
    encoder: ModelRef | None = None


class LanguageSettings(_Model):
    supported: tuple[Language, ...] = Field(default=LANGUAGES, min_length=1)
    default: Language = "zh"


# ------------------------------------------------------------------------------ entities


@lru_cache(maxsize=1024)
def _compile(regex: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


class EntityPattern(_Model):
    """A regular expression (Python ``re``) that finds one entity type.

    The entity's text is the ``(?P<value>...)`` group when the regex has one (so a cue such
    as "订单号" can anchor a match without being part of the value), else the whole match.
    ``normaliser`` names the node's canonicaliser (unset = the one for ``type``); a higher
    ``priority`` wins when two matches overlap.
    """

    id: Ident
    type: Ident
    regex: Text
    languages: tuple[Language, ...] = Field(default=LANGUAGES, min_length=1)
    ignore_case: bool = True
    normaliser: Ident | None = None
    priority: int = Field(default=50, ge=0, le=100)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"regex does not compile: {exc}") from exc
        if compiled.match(""):
            raise ValueError("regex matches the empty string (it would match everywhere)")
        return v

    @property
    def compiled(self) -> re.Pattern[str]:
        return _compile(self.regex, self.ignore_case)

    def find_values(self, text: str) -> list[str]:
        """Every match's value text (the ``value`` group, else the whole match)."""
        rx = self.compiled
        group = "value" if "value" in rx.groupindex else 0
        return [m.group(group) for m in rx.finditer(text)]


class EntityLookup(_Model):
    """Known values of one type: canonical value → aliases (the canonical one matches too)."""

    id: Ident
    type: Ident
    languages: tuple[Language, ...] = Field(default=LANGUAGES, min_length=1)
    priority: int = Field(default=30, ge=0, le=100)
    values: dict[Text, tuple[Text, ...]] = Field(min_length=1)


class EntitySettings(_Model):
    custom_types: tuple[Ident, ...] = ()  # tenant types beyond BUILTIN_ENTITY_TYPES
    patterns: tuple[EntityPattern, ...] = ()
    lookups: tuple[EntityLookup, ...] = ()

    @property
    def types(self) -> tuple[str, ...]:
        return BUILTIN_ENTITY_TYPES + self.custom_types


# ----------------------------------------------------------------------------- scenarios

_Scalar = str | int | float | bool


def _user_conditions(v: dict[str, Any]) -> dict[str, Any]:
    for key, value in v.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(x, _Scalar) for x in values):
            raise ValueError(
                f"user condition {key!r} must be a scalar or a non-empty list of scalars "
                "(a list means any of them)"
            )
    return v


class ScenarioMatch(_Model):
    intents: tuple[Ident, ...] = ()
    keywords: LocalizedList = LocalizedList()
    recent_intents: tuple[Ident, ...] = ()  # intents seen earlier in this session
    channels: tuple[Channel, ...] = ()
    entry_paths: tuple[Text, ...] = ()  # fnmatch patterns, e.g. "/orders/*"
    user: Annotated[dict[Ident, Any], AfterValidator(_user_conditions)] = Field(
        default_factory=dict
    )

    def is_empty(self) -> bool:
        return not (
            self.intents
            or self.keywords.all()
            or self.recent_intents
            or self.channels
            or self.entry_paths
            or self.user
        )


class Scenario(_Model):
    id: Ident
    names: LocalizedText
    match: ScenarioMatch = ScenarioMatch()
    priority: int = 0
    fallback: bool = False  # answers when no other scenario matches (exactly one)
    kb_scopes: tuple[Ident, ...] = ()
    templates: dict[Ident, Ident] = Field(default_factory=dict)  # intent → template id
    soothing: bool = True
    models: ScenarioModels = ScenarioModels()


# ------------------------------------------------------------------------ knowledge base


def _scope_ref(v: str) -> str:
    return v if v == "*" else _ident(v)


class KbEntry(_Model):
    """A question/answer pair; ``scopes: ["*"]`` makes it visible in every scope."""

    id: Ident
    scopes: tuple[Annotated[str, AfterValidator(_scope_ref)], ...] = Field(min_length=1)
    questions: LocalizedList
    answers: LocalizedText
    tags: tuple[Text, ...] = ()

    @field_validator("questions")
    @classmethod
    def _has_question(cls, v: LocalizedList) -> LocalizedList:
        if not v.all():
            raise ValueError("an entry needs at least one question")
        return v


class KnowledgeBase(_Model):
    scopes: dict[Ident, LocalizedText] = Field(default_factory=dict)  # scope → display name
    entries: tuple[KbEntry, ...] = ()

    def entries_in(self, scopes: Iterable[str]) -> tuple[KbEntry, ...]:
        wanted = set(scopes)
        return tuple(e for e in self.entries if "*" in e.scopes or wanted.intersection(e.scopes))


# ------------------------------------------------------------------------ session policy

NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class HandoffConditions(_Model):
    """When to hand the conversation to a human (turn counts: 0 = never)."""

    explicit_request: bool = True
    complaint: bool = True
    negative_sentiment_turns: NonNegInt = 2
    low_confidence_turns: NonNegInt = 2
    vip: bool = False
    plugin_failure: bool = True


class SessionPolicy(_Model):
    inactivity_timeout_seconds: PosInt = 1800
    max_turns: PosInt = 50
    retention_days: PosInt = 30
    handoff: HandoffConditions = HandoffConditions()
    kb_confidence_threshold: Ratio = 0.55
    # Below this intent confidence a turn neither switches scenario nor counts as understood.
    intent_confidence_threshold: Ratio = 0.6
    clarify_attempts: NonNegInt = 1  # clarifying questions before offering a human
    offer_human: bool = True  # ask before transferring (False = transfer at once)


class HandoffOverride(_Model):
    explicit_request: bool | None = None
    complaint: bool | None = None
    negative_sentiment_turns: NonNegInt | None = None
    low_confidence_turns: NonNegInt | None = None
    vip: bool | None = None
    plugin_failure: bool | None = None


class SessionPolicyOverride(_Model):
    """The fields a business line changes; everything unset comes from ``default``."""

    inactivity_timeout_seconds: PosInt | None = None
    max_turns: PosInt | None = None
    retention_days: PosInt | None = None
    handoff: HandoffOverride | None = None
    kb_confidence_threshold: Ratio | None = None
    intent_confidence_threshold: Ratio | None = None
    clarify_attempts: NonNegInt | None = None
    offer_human: bool | None = None


class SessionPolicies(_Model):
    default: SessionPolicy = SessionPolicy()
    overrides: dict[Ident, SessionPolicyOverride] = Field(default_factory=dict)  # scenario →

    #: Merged policies by scenario: the config is frozen, and a turn asks several times.
    _merged: dict[str, SessionPolicy] = PrivateAttr(default_factory=dict)

    def for_scenario(self, scenario_id: str | None) -> SessionPolicy:
        key = scenario_id or ""
        merged = self._merged.get(key)
        if merged is None:
            merged = self._merged[key] = self._merge(key)
        return merged

    def _merge(self, scenario_id: str) -> SessionPolicy:
        over = self.overrides.get(scenario_id)
        if over is None:
            return self.default
        update = over.model_dump(exclude_none=True, exclude={"handoff"})
        if over.handoff is not None:
            update["handoff"] = self.default.handoff.model_copy(
                update=over.handoff.model_dump(exclude_none=True)
            )
        return self.default.model_copy(update=update)


# ------------------------------------------------------------------- limits and soothing


class TokenBucket(_Model):
    rate_per_second: Annotated[float, Field(gt=0)]
    burst: PosInt


class RateLimits(_Model):
    tenant: TokenBucket
    channels: dict[Channel, TokenBucket] = Field(default_factory=dict)  # replace `tenant`

    def for_channel(self, channel: str | None) -> TokenBucket:
        for name, bucket in self.channels.items():
            if name == channel:
                return bucket
        return self.tenant


class Soothing(_Model):
    prefixes: LocalizedList  # empathetic openers, one picked per soothed reply
    handoff_offer: LocalizedText
    negative_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.6


# -------------------------------------------------------------------------- the config


class TenantConfig(_Model):
    """One tenant's whole configuration.

    ``TenantConfig.model_validate`` checks structure only; build it with
    :func:`load_tenant_config`, :func:`parse_tenant_config` or
    :func:`tenant_config_from_mapping`, which also check cross-references.
    """

    schema_version: Literal[1] = 1
    tenant: TenantInfo
    api_keys: tuple[ApiKeyRecord, ...] = ()
    models: ModelAssignments
    languages: LanguageSettings = LanguageSettings()
    entities: EntitySettings = EntitySettings()
    scenarios: tuple[Scenario, ...] = Field(min_length=1)
    templates: dict[Ident, Template] = Field(default_factory=dict)
    kb: KnowledgeBase = KnowledgeBase()
    session_policy: SessionPolicies = SessionPolicies()
    rate_limits: RateLimits
    soothing: Soothing
    # Task flows and the back ends they call (kefu.config.flows).
    integrations: dict[Ident, Integration] = Field(default_factory=dict)
    plugins: tuple[PluginSpec, ...] = ()
    flows: tuple[FlowSpec, ...] = ()

    # -- keys

    def find_key(self, key: str) -> ApiKeyRecord | None:
        """The non-revoked key record matching ``key`` (constant-time compare), or None."""
        digest = hash_api_key(key)
        found = None
        for record in self.api_keys:  # no early exit: time does not depend on the position
            if hmac.compare_digest(digest, record.sha256) and not record.revoked:
                found = record
        return found

    def check_key(self, key: str) -> bool:
        return self.find_key(key) is not None

    # -- lookups

    @property
    def intent_labels(self) -> tuple[str, ...]:
        return self.models.intent.labels

    def scenario(self, scenario_id: str) -> Scenario:
        for s in self.scenarios:
            if s.id == scenario_id:
                return s
        raise KeyError(scenario_id)

    def models_for(self, scenario_id: str | None) -> tuple[ModelRef, ModelRef]:
        """The (intent, sentiment) models serving a session in ``scenario_id``: the scenario's
        pins where set (a canary, a specialised classifier), else the tenant's."""
        pins = next((s.models for s in self.scenarios if s.id == scenario_id), None)
        if pins is None:
            return self.models.intent, self.models.sentiment
        return pins.intent or self.models.intent, pins.sentiment or self.models.sentiment

    @property
    def fallback_scenario(self) -> Scenario:
        return next(s for s in self.scenarios if s.fallback)

    def template_for(self, scenario_id: str, intent: str) -> Template | None:
        """The scenario's template for ``intent``, else the fallback scenario's."""
        for s in (self.scenario(scenario_id), self.fallback_scenario):
            if intent in s.templates:
                return self.templates[s.templates[intent]]
        return None

    def policy_for(self, scenario_id: str | None) -> SessionPolicy:
        return self.session_policy.for_scenario(scenario_id)

    def kb_for(self, scenario_id: str) -> tuple[KbEntry, ...]:
        return self.kb.entries_in(self.scenario(scenario_id).kb_scopes)
