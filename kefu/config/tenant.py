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

The sections live by concept: field types and texts in :mod:`kefu.config.fields`; the
knowledge base, session policies, rate limits and soothing in :mod:`kefu.config.policies`;
flows and plugins in :mod:`kefu.config.flows`. Every name stays importable from here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from kefu.config.fields import (
    CHANNELS,
    LANGUAGES,
    Channel,
    ConfigModel,
    Ident,
    Language,
    LocalizedList,
    LocalizedText,
    Template,
    Text,
    check_bundle_name,
    check_sha256_hex,
    check_tenant_id,
)
from kefu.config.flows import FlowSpec, Integration, PluginSpec
from kefu.config.policies import (
    HandoffConditions,
    HandoffOverride,
    KbEntry,
    KnowledgeBase,
    RateLimits,
    SessionPolicies,
    SessionPolicy,
    SessionPolicyOverride,
    Soothing,
    TokenBucket,
)
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

BUILTIN_ENTITY_TYPES = ("order_number", "tracking_number", "phone", "amount", "date", "email")


# -------------------------------------------------------------------------- tenant, keys


class TenantInfo(ConfigModel):
    id: Annotated[str, AfterValidator(check_tenant_id)]
    name: LocalizedText
    enabled: bool = True


KeyRole = Literal["channel", "admin", "agent"]


class ApiKeyRecord(ConfigModel):
    """An API key as stored: only its SHA-256, never the key itself."""

    id: Ident
    sha256: Annotated[str, AfterValidator(check_sha256_hex)]
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


class ModelRef(ConfigModel):
    """A model bundle by name; no version = the newest verified version in the store.

    Written as a mapping or as a string ``name`` / ``name@version``. ``labels``, when
    listed, are the classes the model predicts; scenarios are checked against them.
    """

    name: Annotated[str, AfterValidator(check_bundle_name)]
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


class ModelAssignments(ConfigModel):
    intent: ModelRef
    sentiment: ModelRef
    encoder: ModelRef | None = None  # sentence encoder for dense KB retrieval


class ScenarioModels(ConfigModel):
    """Per-scenario model pins (a canary, a specialised classifier); unset = the tenant's."""

    intent: ModelRef | None = None
    sentiment: ModelRef | None = None
    encoder: ModelRef | None = None


class LanguageSettings(ConfigModel):
    supported: tuple[Language, ...] = Field(default=LANGUAGES, min_length=1)
    default: Language = "zh"


# ------------------------------------------------------------------------------ entities


@lru_cache(maxsize=1024)
def _compile(regex: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


class EntityPattern(ConfigModel):
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


class EntityLookup(ConfigModel):
    """Known values of one type: canonical value → aliases (the canonical one matches too)."""

    id: Ident
    type: Ident
    languages: tuple[Language, ...] = Field(default=LANGUAGES, min_length=1)
    priority: int = Field(default=30, ge=0, le=100)
    values: dict[Text, tuple[Text, ...]] = Field(min_length=1)


class EntitySettings(ConfigModel):
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


class ScenarioMatch(ConfigModel):
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


class Scenario(ConfigModel):
    id: Ident
    names: LocalizedText
    match: ScenarioMatch = ScenarioMatch()
    priority: int = 0
    fallback: bool = False  # answers when no other scenario matches (exactly one)
    kb_scopes: tuple[Ident, ...] = ()
    templates: dict[Ident, Ident] = Field(default_factory=dict)  # intent → template id
    soothing: bool = True
    models: ScenarioModels = ScenarioModels()
    #: The response-time objective of this business line: a turn slower than this counts as
    #: a slow turn in telemetry and the canary comparison (unset: the node-wide 1,000 ms).
    latency_objective_ms: float | None = Field(default=None, gt=0.0, le=60_000.0)


# -------------------------------------------------------------------------- the config


class TenantConfig(ConfigModel):
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
