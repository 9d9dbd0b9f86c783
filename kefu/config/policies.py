"""How a tenant's conversations are bounded: the knowledge base, session policies per business
line (timeouts, hand-off conditions, thresholds, retention), rate limits and the soothing
strategy. Sections of :class:`kefu.config.tenant.TenantConfig`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, Field, PrivateAttr, field_validator

from kefu.config.fields import (
    Channel,
    ConfigModel,
    Ident,
    LocalizedList,
    LocalizedText,
    Text,
    check_ident,
)

__all__ = [
    "HandoffConditions",
    "HandoffOverride",
    "KbEntry",
    "KnowledgeBase",
    "RateLimits",
    "SessionPolicies",
    "SessionPolicy",
    "SessionPolicyOverride",
    "Soothing",
    "TokenBucket",
]


# ------------------------------------------------------------------------ knowledge base


def _scope_ref(v: str) -> str:
    return v if v == "*" else check_ident(v)


class KbEntry(ConfigModel):
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


class KnowledgeBase(ConfigModel):
    scopes: dict[Ident, LocalizedText] = Field(default_factory=dict)  # scope → display name
    entries: tuple[KbEntry, ...] = ()

    def entries_in(self, scopes: Iterable[str]) -> tuple[KbEntry, ...]:
        wanted = set(scopes)
        return tuple(e for e in self.entries if "*" in e.scopes or wanted.intersection(e.scopes))


# ------------------------------------------------------------------------ session policy

NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class HandoffConditions(ConfigModel):
    """When to hand the conversation to a human (turn counts: 0 = never)."""

    explicit_request: bool = True
    complaint: bool = True
    negative_sentiment_turns: NonNegInt = 2
    low_confidence_turns: NonNegInt = 2
    vip: bool = False
    plugin_failure: bool = True


class SessionPolicy(ConfigModel):
    inactivity_timeout_seconds: PosInt = 1800
    max_turns: PosInt = 50
    retention_days: PosInt = 30
    handoff: HandoffConditions = HandoffConditions()
    kb_confidence_threshold: Ratio = 0.55
    # Below this intent confidence a turn neither switches scenario nor counts as understood.
    intent_confidence_threshold: Ratio = 0.6
    clarify_attempts: NonNegInt = 1  # clarifying questions before offering a human
    offer_human: bool = True  # ask before transferring (False = transfer at once)


class HandoffOverride(ConfigModel):
    explicit_request: bool | None = None
    complaint: bool | None = None
    negative_sentiment_turns: NonNegInt | None = None
    low_confidence_turns: NonNegInt | None = None
    vip: bool | None = None
    plugin_failure: bool | None = None


class SessionPolicyOverride(ConfigModel):
    """The fields a business line changes; everything unset comes from ``default``."""

    inactivity_timeout_seconds: PosInt | None = None
    max_turns: PosInt | None = None
    retention_days: PosInt | None = None
    handoff: HandoffOverride | None = None
    kb_confidence_threshold: Ratio | None = None
    intent_confidence_threshold: Ratio | None = None
    clarify_attempts: NonNegInt | None = None
    offer_human: bool | None = None


class SessionPolicies(ConfigModel):
    default: SessionPolicy = SessionPolicy()
    overrides: dict[Ident, SessionPolicyOverride] = Field(default_factory=dict)  # scenario →

    #: Merged policies by scenario: the config is frozen, and a turn asks several times.
    _merged: dict[str, SessionPolicy] = PrivateAttr(default_factory=dict)

    def longest_retention_days(self) -> int:
        """The store purges per tenant, so the longest period of any business line applies:
        nothing a business line must keep is deleted early (replicas are kept as long)."""
        return max(
            [self.default.retention_days]
            + [o.retention_days for o in self.overrides.values() if o.retention_days]
        )

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


class TokenBucket(ConfigModel):
    rate_per_second: Annotated[float, Field(gt=0)]
    burst: PosInt


class RateLimits(ConfigModel):
    tenant: TokenBucket
    channels: dict[Channel, TokenBucket] = Field(default_factory=dict)  # replace `tenant`

    def for_channel(self, channel: str | None) -> TokenBucket:
        for name, bucket in self.channels.items():
            if name == channel:
                return bucket
        return self.tenant


class Soothing(ConfigModel):
    prefixes: LocalizedList  # empathetic openers, one picked per soothed reply
    handoff_offer: LocalizedText
    negative_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.6
