"""One line of help per `kefu cp` verb and group, in English and Chinese (shown by --help).

A verb missing here still works; it just lists without a description."""

from __future__ import annotations

__all__ = ["HELP"]

HELP: dict[tuple[str, ...], str] = {
    ("status",): "the replica you reach, the leader and who you are / 控制面状态",
    ("tokens",): "operator tokens (admin / viewer) / 操作员令牌",
    ("tokens", "issue"): "issue a token (shown once) / 签发令牌",
    ("tokens", "list"): "list tokens (never their secrets) / 列出令牌",
    ("tokens", "revoke"): "revoke a token / 吊销令牌",
    ("tokens", "rotate"): "a new secret; the old one works for --overlap / 轮换令牌",
    ("tenants",): "tenants / 租户",
    ("tenants", "list"): "list tenants / 列出租户",
    ("tenants", "create"): "create a tenant / 创建租户",
    ("tenants", "disable"): "stop serving a tenant everywhere / 停用租户",
    ("tenants", "enable"): "serve a tenant again / 启用租户",
    ("keys",): "tenant API keys / 租户 API 密钥",
    ("keys", "issue"): "issue an API key (shown once) / 签发 API 密钥",
    ("keys", "revoke"): "revoke an API key / 吊销 API 密钥",
    ("keys", "rotate"): "a successor key; the old one works for --overlap / 轮换 API 密钥",
    ("keys", "list"): "a tenant's keys: roles, expiry, successor / 列出 API 密钥",
    ("regions",): "regions / 区域",
    ("regions", "list"): "list regions / 列出区域",
    ("regions", "create"): "create a region / 创建区域",
    ("config",): "tenant configs, versioned / 租户配置（带版本）",
    ("config", "put"): "validate and store a new config version / 上传新配置版本",
    ("config", "list"): "list a tenant's config versions / 列出配置版本",
    ("config", "show"): "print one config version / 查看配置版本",
    ("config", "diff"): "diff two config versions / 比较配置版本",
    ("config", "rollback"): "make an earlier version current again / 回滚配置",
    ("model",): "published, signed model versions / 已发布的签名模型",
    ("model", "publish"): "verify and publish a signed bundle / 发布模型",
    ("model", "list"): "list model versions / 列出模型版本",
    ("model", "show"): "one model version: manifest, metrics, signer / 查看模型版本",
    ("assign",): "set the config and models a tenant runs in a region / 分配配置与模型",
    ("assignments",): "what every tenant runs where / 查看分配",
    ("nodes",): "nodes: region, what they serve, refusals / 节点状态",
    ("audit",): "who changed what, when / 审计日志",
    ("telemetry",): "turns, latency, hand-offs per tenant and version / 遥测",
    ("rollout",): "staged rollouts of models and configs / 灰度发布",
    ("rollout", "start"): "start a rollout: waves, steps, bake time / 开始灰度发布",
    ("rollout", "list"): "list rollouts / 列出灰度发布",
    ("rollout", "show"): "one rollout: waves, nodes, history / 查看灰度发布",
    ("rollout", "pause"): "hold the current step / 暂停",
    ("rollout", "resume"): "continue a paused rollout / 继续",
    ("rollout", "promote"): "skip to 100 %% everywhere / 全量发布",
    ("rollout", "rollback"): "every node back to the captured baseline / 回滚",
    ("rollout", "abort"): "end the rollout, assignments unchanged / 中止",
}
