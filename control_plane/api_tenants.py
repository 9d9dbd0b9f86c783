"""The tenants-and-credentials part of ``kefu.v1.ControlPlane``: CreateTenant, SetTenantEnabled,
ListTenants, tenants' API keys (IssueApiKey, RotateApiKey, RevokeApiKey) and operator tokens
(IssueOperatorToken, RotateOperatorToken, ListOperatorTokens, RevokeOperatorToken), and their
messages.

Handlers are named as their RPCs; :class:`~kefu.control_plane.api.ControlPlaneApi` wraps each
with authentication, authorization and error mapping (as for the rollout and region RPCs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from kefu.control_plane.api_regions import residency_msg
from kefu.control_plane.auth import parse_role
from kefu.control_plane.tokens import OperatorTokenRecord, OperatorTokens
from kefu.v1 import control_plane_pb2 as pb
from kefu.wire import TenantRecord

if TYPE_CHECKING:
    from kefu.control_plane.service import ControlPlane

__all__ = [
    "CreateTenant",
    "IssueApiKey",
    "IssueOperatorToken",
    "ListOperatorTokens",
    "ListTenants",
    "RevokeApiKey",
    "RevokeOperatorToken",
    "RotateApiKey",
    "RotateOperatorToken",
    "SetTenantEnabled",
    "operator_token_msg",
    "tenant_msg",
]


class _Api(Protocol):
    cp: ControlPlane
    tokens: OperatorTokens

    def _actor_name(self) -> str: ...


def tenant_msg(t: TenantRecord) -> pb.Tenant:
    return pb.Tenant(
        id=t.id,
        name=t.name,
        enabled=t.enabled,
        created_at=t.created_at,
        current_config=t.current_config,
        api_keys=[
            pb.ApiKey(
                id=k.id,
                created_at=k.created_at,
                revoked=k.revoked,
                expires_at=k.expires_at,
                successor=k.successor,
            )
            for k in t.api_keys
        ],
        residency=residency_msg(t.residency),
    )


def operator_token_msg(t: OperatorTokenRecord) -> pb.OperatorToken:
    return pb.OperatorToken(
        name=t.name,
        role=t.role.value,
        created_at=t.created_at,
        created_by=t.created_by,
        revoked=t.revoked,
        revoked_at=t.revoked_at,
        revoked_by=t.revoked_by,
        expires_at=t.expires_at,
        previous_expires_at=t.previous_expires_at,
    )


# The handlers, named as their RPCs: ControlPlaneApi wraps each with authentication,
# authorization and error mapping (``CreateTenant = _rpc(api_tenants.CreateTenant)``).


async def CreateTenant(api: _Api, req: pb.CreateTenantRequest, ctx: Any) -> pb.Tenant:
    return tenant_msg(
        await api.cp.create_tenant(req.tenant, name=req.name, actor=api._actor_name())
    )


async def SetTenantEnabled(api: _Api, req: pb.SetTenantEnabledRequest, ctx: Any) -> pb.Tenant:
    t = await api.cp.set_tenant_enabled(req.tenant, req.enabled, actor=api._actor_name())
    return tenant_msg(t)


async def ListTenants(api: _Api, req: pb.ListTenantsRequest, ctx: Any) -> pb.ListTenantsReply:
    return pb.ListTenantsReply(tenants=[tenant_msg(t) for t in await api.cp.list_tenants()])


async def IssueApiKey(api: _Api, req: pb.IssueApiKeyRequest, ctx: Any) -> pb.IssueApiKeyReply:
    key_id, key = await api.cp.issue_key(req.tenant, actor=api._actor_name(), ttl_s=req.ttl_s)
    return pb.IssueApiKeyReply(key_id=key_id, key=key)


async def RotateApiKey(api: _Api, req: pb.RotateApiKeyRequest, ctx: Any) -> pb.RotateApiKeyReply:
    key_id, key, expires = await api.cp.rotate_key(
        req.tenant, req.key_id, overlap_s=req.overlap_s, actor=api._actor_name()
    )
    return pb.RotateApiKeyReply(
        key_id=key_id, key=key, old_key_id=req.key_id, old_expires_at=expires
    )


async def RevokeApiKey(api: _Api, req: pb.RevokeApiKeyRequest, ctx: Any) -> pb.Tenant:
    return tenant_msg(await api.cp.revoke_key(req.tenant, req.key_id, actor=api._actor_name()))


async def IssueOperatorToken(
    api: _Api, req: pb.IssueOperatorTokenRequest, ctx: Any
) -> pb.IssueOperatorTokenReply:
    rec, token = await api.tokens.issue(
        req.name,
        parse_role(req.role or "viewer"),
        actor=api._actor_name(),
        replace=req.replace,
        ttl_s=req.ttl_s,
    )
    return pb.IssueOperatorTokenReply(info=operator_token_msg(rec), token=token)


async def RotateOperatorToken(
    api: _Api, req: pb.RotateOperatorTokenRequest, ctx: Any
) -> pb.IssueOperatorTokenReply:
    rec, token = await api.tokens.rotate(req.name, overlap_s=req.overlap_s, actor=api._actor_name())
    return pb.IssueOperatorTokenReply(info=operator_token_msg(rec), token=token)


async def ListOperatorTokens(
    api: _Api, req: pb.ListOperatorTokensRequest, ctx: Any
) -> pb.ListOperatorTokensReply:
    return pb.ListOperatorTokensReply(
        tokens=[operator_token_msg(t) for t in await api.tokens.list()]
    )


async def RevokeOperatorToken(
    api: _Api, req: pb.RevokeOperatorTokenRequest, ctx: Any
) -> pb.OperatorToken:
    return operator_token_msg(await api.tokens.revoke(req.name, actor=api._actor_name()))
