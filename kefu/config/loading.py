"""Loading a tenant configuration: YAML → :class:`~kefu.config.tenant.TenantConfig`, checked
field by field (pydantic) and then as a whole (:mod:`kefu.config.references`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kefu.config.references import reference_problems
from kefu.config.tenant import TenantConfig
from kefu.config.yamlsource import YamlDocument, load_yaml, parse_yaml

__all__ = ["load_tenant_config", "parse_tenant_config", "tenant_config_from_mapping"]


def load_tenant_config(path: str | Path) -> TenantConfig:
    """Load and fully validate a tenant YAML file; raise ConfigError listing every problem."""
    return _from_document(load_yaml(path))


def parse_tenant_config(text: str | bytes, *, source: str = "<tenant config>") -> TenantConfig:
    """Like :func:`load_tenant_config` for text received from elsewhere (control plane)."""
    return _from_document(parse_yaml(text, source=source))


def tenant_config_from_mapping(
    data: Mapping[str, Any], *, source: str = "<tenant config>"
) -> TenantConfig:
    """Validate already-parsed data (no line numbers; errors still name the field)."""
    return _from_document(YamlDocument(path=source, data=data, lines={}))


def _from_document(doc: YamlDocument) -> TenantConfig:
    if not isinstance(doc.data, Mapping):
        raise doc.error("the top level must be a mapping of sections (tenant:, models:, ...)")
    cfg = doc.validate(TenantConfig)
    problems = reference_problems(cfg)
    if problems:
        raise doc.problems_error(problems)
    return cfg
