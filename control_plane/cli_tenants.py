"""``kefu cp tokens|tenants|keys|config|model ...``: operator tokens, tenants and their API keys,
tenant config versions and published models from the command line (human tables, or JSON with
``--json``).

    kefu cp tenants create shop --name "Shop"
    kefu cp keys rotate shop KEY_ID --overlap 24h
    kefu cp config put shop shop.yaml --comment "new FAQ"
    kefu cp model publish ./bundle
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kefu.control_plane.tables import listed, table, when
from kefu.control_plane.tables import simple as _simple
from kefu.errors import PermanentError
from kefu.rotation import format_utc, parse_duration

__all__ = ["TENANT_VERBS", "add_tenant_args"]


def _show_tenants(r: Any) -> None:
    rows = listed(r, "tenants")
    table(
        "tenants / 租户",
        ["tenant", "name", "enabled", "config", "keys (active)", "created"],
        [
            (
                t.id,
                t.name,
                t.enabled,
                t.current_config,
                sum(not k.revoked for k in t.api_keys),
                when(t.created_at),
            )
            for t in rows
        ],
    )


def _show_keys(tenant: str) -> Any:
    def show(r: Any) -> None:
        rows = [(t.id, k) for t in r.tenants if t.id == tenant for k in t.api_keys]
        if not rows:
            raise PermanentError(f"no tenant {tenant!r} / 租户 {tenant!r} 不存在")
        table(
            f"API keys of {tenant} / 租户 API 密钥",
            ["key", "state", "created", "expires", "successor"],
            [
                (
                    k.id,
                    "revoked" if k.revoked else "active",
                    when(k.created_at),
                    _expiry(k.expires_at),
                    k.successor or "-",
                )
                for _, k in rows
            ],
        )

    return show


def _show_configs(r: Any) -> None:
    rows = listed(r, "versions")
    table(
        "config versions / 配置版本",
        ["tenant", "version", "digest", "author", "when", "comment"],
        [(c.tenant, c.version, c.digest, c.author, when(c.created_at), c.comment) for c in rows],
    )


def _show_models(r: Any) -> None:
    models = getattr(r, "models", None)
    rows = models if models is not None and not hasattr(r, "sha256") else [r]
    table(
        "model versions / 模型版本",
        ["model", "version", "task", "size", "accuracy", "macro-F1", "signer", "published"],
        [
            (
                m.name,
                m.version,
                m.task,
                f"{m.size / 1e6:.1f} MB",
                f"{m.metrics['accuracy']:.4f}" if "accuracy" in m.metrics else "-",
                f"{m.metrics['macro_f1']:.4f}" if "macro_f1" in m.metrics else "-",
                m.signer[:12],
                when(m.published_at),
            )
            for m in rows
        ],
    )


def _show_key(r: Any) -> None:
    print(f"API key {r.key_id} (shown once; only its hash is stored / 仅显示一次):\n  {r.key}")


def _show_rotated_key(r: Any) -> None:
    print(
        f"API key {r.key_id} replaces {r.old_key_id} (shown once; only its hash is stored / "
        f"仅显示一次):\n  {r.key}\n"
        f"{r.old_key_id} keeps working until {format_utc(r.old_expires_at)}, then is refused / "
        f"{r.old_key_id} 在 {format_utc(r.old_expires_at)} 之前仍可使用，之后将被拒绝"
    )


def _show_rotated_token(r: Any) -> None:
    until = format_utc(r.info.previous_expires_at)
    print(
        f"operator token {r.info.name} ({r.info.role}) rotated; the new secret is shown once / "
        f"令牌已轮换，新令牌仅显示一次:\n  {r.token}\n"
        f"the old secret keeps working until {until}, then is refused / "
        f"旧令牌在 {until} 之前仍可使用，之后将被拒绝"
    )


def _ttl(a: argparse.Namespace) -> float:
    return parse_duration(a.ttl, what="--ttl", maximum=5 * 365 * 86400.0) if a.ttl else 0.0


def _expiry(ts: float) -> str:
    return when(ts) if ts else "-"


def _show_tokens(r: Any) -> None:
    rows = listed(r, "tokens")
    table(
        "operator tokens / 操作员令牌",
        ["name", "role", "state", "created", "by", "expires", "old secret until", "revoked"],
        [
            (
                t.name,
                t.role,
                "revoked" if t.revoked else "active",
                when(t.created_at),
                t.created_by,
                _expiry(t.expires_at),
                _expiry(t.previous_expires_at),
                f"{when(t.revoked_at)} by {t.revoked_by}" if t.revoked else "-",
            )
            for t in rows
        ],
    )


def _show_new_token(r: Any) -> None:
    print(
        f"operator token {r.info.name} ({r.info.role}); shown once, only its hash is stored / "
        f"仅显示一次:\n  {r.token}"
    )


def _publish(pb: Any, a: argparse.Namespace) -> Any:
    from kefu.bundle import pack
    from kefu.models.store import ModelStore, data_dir, trust_for

    path = Path(a.bundle)
    if not (path / "manifest.json").is_file():
        path = ModelStore(data_dir(a.data_dir) / "models", trust_for(data_dir(a.data_dir))).resolve(
            a.bundle
        )
    return pb.PublishModelRequest(packed_bundle=pack(path))


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError(f"{path}: cannot read ({exc})") from exc


TENANT_VERBS: dict[tuple[str, ...], dict[str, Any]] = {
    ("tokens", "issue"): _simple(
        "IssueOperatorToken",
        lambda pb, a: pb.IssueOperatorTokenRequest(
            name=a.name, role=a.role, replace=a.replace, ttl_s=_ttl(a)
        ),
        _show_new_token,
    ),
    ("tokens", "rotate"): _simple(
        "RotateOperatorToken",
        lambda pb, a: pb.RotateOperatorTokenRequest(
            name=a.name, overlap_s=parse_duration(a.overlap)
        ),
        _show_rotated_token,
    ),
    ("tokens", "list"): _simple(
        "ListOperatorTokens", lambda pb, a: pb.ListOperatorTokensRequest(), _show_tokens
    ),
    ("tokens", "revoke"): _simple(
        "RevokeOperatorToken",
        lambda pb, a: pb.RevokeOperatorTokenRequest(name=a.name),
        _show_tokens,
    ),
    ("tenants", "list"): _simple(
        "ListTenants", lambda pb, a: pb.ListTenantsRequest(), _show_tenants
    ),
    ("tenants", "create"): _simple(
        "CreateTenant",
        lambda pb, a: pb.CreateTenantRequest(tenant=a.tenant, name=a.name or ""),
        _show_tenants,
    ),
    ("tenants", "disable"): _simple(
        "SetTenantEnabled",
        lambda pb, a: pb.SetTenantEnabledRequest(tenant=a.tenant, enabled=False),
        _show_tenants,
    ),
    ("tenants", "enable"): _simple(
        "SetTenantEnabled",
        lambda pb, a: pb.SetTenantEnabledRequest(tenant=a.tenant, enabled=True),
        _show_tenants,
    ),
    ("keys", "issue"): _simple(
        "IssueApiKey",
        lambda pb, a: pb.IssueApiKeyRequest(tenant=a.tenant, ttl_s=_ttl(a)),
        _show_key,
    ),
    ("keys", "list"): {
        "build": lambda pb, a: ("ListTenants", pb.ListTenantsRequest()),
        "show": None,
        "show_with_args": lambda a: _show_keys(a.tenant),
    },
    ("keys", "rotate"): _simple(
        "RotateApiKey",
        lambda pb, a: pb.RotateApiKeyRequest(
            tenant=a.tenant, key_id=a.key_id, overlap_s=parse_duration(a.overlap)
        ),
        _show_rotated_key,
    ),
    ("keys", "revoke"): _simple(
        "RevokeApiKey",
        lambda pb, a: pb.RevokeApiKeyRequest(tenant=a.tenant, key_id=a.key_id),
        _show_tenants,
    ),
    ("config", "put"): _simple(
        "PutConfig",
        lambda pb, a: pb.PutConfigRequest(
            tenant=a.tenant, yaml=_read_text(a.file), comment=a.comment or "", staged=a.staged
        ),
        _show_configs,
    ),
    ("config", "list"): _simple(
        "ListConfigs", lambda pb, a: pb.ListConfigsRequest(tenant=a.tenant), _show_configs
    ),
    ("config", "show"): _simple(
        "GetConfig",
        lambda pb, a: pb.GetConfigRequest(tenant=a.tenant, version=a.version or 0),
        lambda r: print(r.yaml, end=""),
    ),
    ("config", "diff"): _simple(
        "DiffConfig",
        lambda pb, a: pb.DiffConfigRequest(
            tenant=a.tenant, from_version=a.from_version, to_version=a.to_version or 0
        ),
        lambda r: print(
            r.unified_diff or "(no difference / 无差异)", end="" if r.unified_diff else "\n"
        ),
    ),
    ("config", "rollback"): _simple(
        "RollbackConfig",
        lambda pb, a: pb.RollbackConfigRequest(tenant=a.tenant, version=a.version),
        _show_configs,
    ),
    ("model", "publish"): _simple("PublishModel", _publish, _show_models),
    ("model", "list"): _simple(
        "ListModels", lambda pb, a: pb.ListModelsRequest(name=a.name or ""), _show_models
    ),
    ("model", "show"): _simple(
        "GetModel", lambda pb, a: pb.GetModelRequest(ref=a.ref), _show_models
    ),
}


def add_tenant_args(path: tuple[str, ...], p: argparse.ArgumentParser) -> None:
    if path in (
        ("tenants", "create"),
        ("tenants", "disable"),
        ("tenants", "enable"),
        ("keys", "issue"),
        ("keys", "list"),
    ):
        p.add_argument("tenant")
    if path == ("tenants", "create"):
        p.add_argument("--name")
    if path in (("keys", "revoke"), ("keys", "rotate")):
        p.add_argument("tenant")
        p.add_argument("key_id")
    if path in (("tokens", "issue"), ("tokens", "revoke"), ("tokens", "rotate")):
        p.add_argument("name", help="token name (the audit log's actor)")
    if path in (("keys", "rotate"), ("tokens", "rotate")):
        p.add_argument(
            "--overlap",
            default="24h",
            help="how long the old secret keeps working beside the new one, e.g. 30m, 24h, "
            "7d (default 24h; 0 = refuse it at once)",
        )
    if path in (("keys", "issue"), ("tokens", "issue")):
        p.add_argument("--ttl", help="expire after this long, e.g. 90d (default: never)")
    if path == ("tokens", "issue"):
        p.add_argument("--role", choices=("viewer", "admin"), default="viewer")
        p.add_argument(
            "--replace", action="store_true", help="rotate an existing active token of this name"
        )
    if path == ("config", "put"):
        p.add_argument("tenant")
        p.add_argument("file", help="tenant YAML")
        p.add_argument("--comment")
        p.add_argument(
            "--staged",
            action="store_true",
            help="store the version without making it current (for a config canary)",
        )
    if path in (("config", "list"),):
        p.add_argument("tenant")
    if path == ("config", "show"):
        p.add_argument("tenant")
        p.add_argument("--version", type=int, help="default: current")
    if path == ("config", "diff"):
        p.add_argument("tenant")
        p.add_argument("from_version", type=int)
        p.add_argument("to_version", type=int, nargs="?", help="default: current")
    if path == ("config", "rollback"):
        p.add_argument("tenant")
        p.add_argument("version", type=int)
    if path == ("model", "publish"):
        p.add_argument("bundle", help="bundle directory, or name / name@version in the local store")
        p.add_argument("--data-dir")
    if path == ("model", "list"):
        p.add_argument("--name")
    if path == ("model", "show"):
        p.add_argument("ref", help="name@version, or name for the newest")
