"""Field types every section of a tenant config uses: ids, languages and channels, texts in
both languages, reply templates, and the strict base model (unknown fields are refused).

Split out of :mod:`kefu.config.tenant`; the validators' messages are the config errors users
see, word for word.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator, model_validator

from kefu.errors import BundleError
from kefu.model_ref import validate_name

__all__ = [
    "CHANNELS",
    "LANGUAGES",
    "Channel",
    "ConfigModel",
    "Ident",
    "Language",
    "LocalizedList",
    "LocalizedText",
    "Template",
    "Text",
    "check_bundle_name",
    "check_ident",
    "check_non_blank",
    "check_sha256_hex",
    "check_tenant_id",
]

Language = Literal["zh", "en"]
Channel = Literal["web", "app", "mini_program", "social"]

LANGUAGES: tuple[Language, ...] = ("zh", "en")
CHANNELS: tuple[Channel, ...] = ("web", "app", "mini_program", "social")

_IDENT = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# Tenant ids become directory names and NATS subject tokens: no dots, no underscores.
_TENANT_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_ident(v: str) -> str:
    if not _IDENT.fullmatch(v):
        raise ValueError(
            f"{v!r} is not a valid id: use lowercase letters, digits, '_', '-' or '.', "
            "starting with a letter (at most 64 characters)"
        )
    return v


def check_tenant_id(v: str) -> str:
    if not _TENANT_ID.fullmatch(v):
        raise ValueError(
            f"{v!r} is not a valid tenant id: use lowercase letters, digits and '-' "
            "(a slug like 'demo-shop', at most 63 characters)"
        )
    return v


def check_bundle_name(v: str) -> str:
    """The one model-name rule (:func:`kefu.model_ref.validate_name`), as a pydantic check."""
    try:
        return validate_name(v)
    except BundleError as exc:
        raise ValueError(str(exc)) from exc


def check_sha256_hex(v: str) -> str:
    if not _SHA256_HEX.fullmatch(v):
        raise ValueError("must be the SHA-256 of the key: 64 lowercase hex digits")
    return v


def check_non_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


Ident = Annotated[str, AfterValidator(check_ident)]
Text = Annotated[str, AfterValidator(check_non_blank)]


class ConfigModel(BaseModel):
    # Unknown fields are typos until proven otherwise; configs are values, not mutable state.
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------- text


class LocalizedText(ConfigModel):
    """One text in each language."""

    zh: Text
    en: Text

    def get(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh


class LocalizedList(ConfigModel):
    """Lists of texts per language (keywords, question variants, prefixes)."""

    zh: tuple[Text, ...] = ()
    en: tuple[Text, ...] = ()

    def get(self, lang: str) -> tuple[str, ...]:
        return self.en if lang == "en" else self.zh

    def all(self) -> tuple[str, ...]:
        return self.zh + self.en


class Template(ConfigModel):
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
