from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApiKey(_message.Message):
    __slots__ = ("id", "created_at", "revoked", "expires_at", "successor")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SUCCESSOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    created_at: float
    revoked: bool
    expires_at: float
    successor: str
    def __init__(self, id: _Optional[str] = ..., created_at: _Optional[float] = ..., revoked: _Optional[bool] = ..., expires_at: _Optional[float] = ..., successor: _Optional[str] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("id", "name", "enabled", "created_at", "current_config", "api_keys", "residency")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CONFIG_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    enabled: bool
    created_at: float
    current_config: int
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    residency: TenantResidency
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., enabled: _Optional[bool] = ..., created_at: _Optional[float] = ..., current_config: _Optional[int] = ..., api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., residency: _Optional[_Union[TenantResidency, _Mapping]] = ...) -> None: ...

class TenantResidency(_message.Message):
    __slots__ = ("home", "allowed", "replicate", "failover_mode")
    HOME_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REPLICATE_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_MODE_FIELD_NUMBER: _ClassVar[int]
    home: str
    allowed: _containers.RepeatedScalarFieldContainer[str]
    replicate: bool
    failover_mode: str
    def __init__(self, home: _Optional[str] = ..., allowed: _Optional[_Iterable[str]] = ..., replicate: _Optional[bool] = ..., failover_mode: _Optional[str] = ...) -> None: ...

class SetTenantResidencyRequest(_message.Message):
    __slots__ = ("tenant", "residency")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    residency: TenantResidency
    def __init__(self, tenant: _Optional[str] = ..., residency: _Optional[_Union[TenantResidency, _Mapping]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("tenant", "name")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    name: str
    def __init__(self, tenant: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SetTenantEnabledRequest(_message.Message):
    __slots__ = ("tenant", "enabled")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    enabled: bool
    def __init__(self, tenant: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsReply(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class IssueApiKeyRequest(_message.Message):
    __slots__ = ("tenant", "ttl_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    ttl_s: float
    def __init__(self, tenant: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class IssueApiKeyReply(_message.Message):
    __slots__ = ("key_id", "key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key: str
    def __init__(self, key_id: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("tenant", "key_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    key_id: str
    def __init__(self, tenant: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class RotateApiKeyRequest(_message.Message):
    __slots__ = ("tenant", "key_id", "overlap_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_S_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    key_id: str
    overlap_s: float
    def __init__(self, tenant: _Optional[str] = ..., key_id: _Optional[str] = ..., overlap_s: _Optional[float] = ...) -> None: ...

class RotateApiKeyReply(_message.Message):
    __slots__ = ("key_id", "key", "old_key_id", "old_expires_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OLD_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key: str
    old_key_id: str
    old_expires_at: float
    def __init__(self, key_id: _Optional[str] = ..., key: _Optional[str] = ..., old_key_id: _Optional[str] = ..., old_expires_at: _Optional[float] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("id", "description", "created_at", "zone", "failover")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    created_at: float
    zone: str
    failover: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., created_at: _Optional[float] = ..., zone: _Optional[str] = ..., failover: _Optional[_Iterable[str]] = ...) -> None: ...

class ConfigureRegionRequest(_message.Message):
    __slots__ = ("region", "zone", "failover")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_FIELD_NUMBER: _ClassVar[int]
    region: str
    zone: str
    failover: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, region: _Optional[str] = ..., zone: _Optional[str] = ..., failover: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateRegionRequest(_message.Message):
    __slots__ = ("region", "description")
    REGION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    region: str
    description: str
    def __init__(self, region: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListRegionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRegionsReply(_message.Message):
    __slots__ = ("regions",)
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[Region]
    def __init__(self, regions: _Optional[_Iterable[_Union[Region, _Mapping]]] = ...) -> None: ...

class ConfigVersion(_message.Message):
    __slots__ = ("tenant", "version", "yaml", "digest", "author", "comment", "created_at", "rollback_of")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    version: int
    yaml: str
    digest: str
    author: str
    comment: str
    created_at: float
    rollback_of: int
    def __init__(self, tenant: _Optional[str] = ..., version: _Optional[int] = ..., yaml: _Optional[str] = ..., digest: _Optional[str] = ..., author: _Optional[str] = ..., comment: _Optional[str] = ..., created_at: _Optional[float] = ..., rollback_of: _Optional[int] = ...) -> None: ...

class PutConfigRequest(_message.Message):
    __slots__ = ("tenant", "yaml", "comment", "staged")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    STAGED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    yaml: str
    comment: str
    staged: bool
    def __init__(self, tenant: _Optional[str] = ..., yaml: _Optional[str] = ..., comment: _Optional[str] = ..., staged: _Optional[bool] = ...) -> None: ...

class ListConfigsRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListConfigsReply(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ConfigVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ConfigVersion, _Mapping]]] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ("tenant", "version")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    version: int
    def __init__(self, tenant: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DiffConfigRequest(_message.Message):
    __slots__ = ("tenant", "from_version", "to_version")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    from_version: int
    to_version: int
    def __init__(self, tenant: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class DiffConfigReply(_message.Message):
    __slots__ = ("unified_diff",)
    UNIFIED_DIFF_FIELD_NUMBER: _ClassVar[int]
    unified_diff: str
    def __init__(self, unified_diff: _Optional[str] = ...) -> None: ...

class RollbackConfigRequest(_message.Message):
    __slots__ = ("tenant", "version")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    version: int
    def __init__(self, tenant: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "version", "task", "family", "labels", "size", "sha256", "signer", "created_at", "metrics", "published_at", "published_by")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    task: str
    family: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    size: int
    sha256: str
    signer: str
    created_at: str
    metrics: _containers.ScalarMap[str, float]
    published_at: float
    published_by: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., task: _Optional[str] = ..., family: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., signer: _Optional[str] = ..., created_at: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., published_at: _Optional[float] = ..., published_by: _Optional[str] = ...) -> None: ...

class PublishModelRequest(_message.Message):
    __slots__ = ("packed_bundle",)
    PACKED_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    packed_bundle: bytes
    def __init__(self, packed_bundle: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsReply(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class ScenarioModels(_message.Message):
    __slots__ = ("models",)
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.ScalarMap[str, str]
    def __init__(self, models: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("tenant", "region", "config_version", "models", "scenario_models", "updated_at", "updated_by")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ScenarioModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ScenarioModels
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ScenarioModels, _Mapping]] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_MODELS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    region: str
    config_version: int
    models: _containers.ScalarMap[str, str]
    scenario_models: _containers.MessageMap[str, ScenarioModels]
    updated_at: float
    updated_by: str
    def __init__(self, tenant: _Optional[str] = ..., region: _Optional[str] = ..., config_version: _Optional[int] = ..., models: _Optional[_Mapping[str, str]] = ..., scenario_models: _Optional[_Mapping[str, ScenarioModels]] = ..., updated_at: _Optional[float] = ..., updated_by: _Optional[str] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("tenant", "region", "models", "scenario_models", "config_version", "remove")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ScenarioModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ScenarioModels
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ScenarioModels, _Mapping]] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_MODELS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    region: str
    models: _containers.ScalarMap[str, str]
    scenario_models: _containers.MessageMap[str, ScenarioModels]
    config_version: int
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant: _Optional[str] = ..., region: _Optional[str] = ..., models: _Optional[_Mapping[str, str]] = ..., scenario_models: _Optional[_Mapping[str, ScenarioModels]] = ..., config_version: _Optional[int] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class ListAssignmentsRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListAssignmentsReply(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class ObservedTenant(_message.Message):
    __slots__ = ("tenant", "state", "config_version", "models", "error", "rollout_id", "canary_weight", "sessions_canary", "sessions_baseline", "switched")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_CANARY_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_BASELINE_FIELD_NUMBER: _ClassVar[int]
    SWITCHED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    state: str
    config_version: int
    models: _containers.ScalarMap[str, str]
    error: str
    rollout_id: str
    canary_weight: float
    sessions_canary: int
    sessions_baseline: int
    switched: int
    def __init__(self, tenant: _Optional[str] = ..., state: _Optional[str] = ..., config_version: _Optional[int] = ..., models: _Optional[_Mapping[str, str]] = ..., error: _Optional[str] = ..., rollout_id: _Optional[str] = ..., canary_weight: _Optional[float] = ..., sessions_canary: _Optional[int] = ..., sessions_baseline: _Optional[int] = ..., switched: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "region", "software_version", "providers", "gpu", "listen", "started_at", "heartbeat_at", "online", "tenants", "models_loaded", "telemetry_dropped", "telemetry_buffered", "reconcile_error", "reconcile_error_at", "capabilities")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_LOADED_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_DROPPED_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_BUFFERED_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_ERROR_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    region: str
    software_version: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    gpu: bool
    listen: str
    started_at: float
    heartbeat_at: float
    online: bool
    tenants: _containers.RepeatedCompositeFieldContainer[ObservedTenant]
    models_loaded: _containers.RepeatedScalarFieldContainer[str]
    telemetry_dropped: int
    telemetry_buffered: int
    reconcile_error: str
    reconcile_error_at: float
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., region: _Optional[str] = ..., software_version: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., gpu: _Optional[bool] = ..., listen: _Optional[str] = ..., started_at: _Optional[float] = ..., heartbeat_at: _Optional[float] = ..., online: _Optional[bool] = ..., tenants: _Optional[_Iterable[_Union[ObservedTenant, _Mapping]]] = ..., models_loaded: _Optional[_Iterable[str]] = ..., telemetry_dropped: _Optional[int] = ..., telemetry_buffered: _Optional[int] = ..., reconcile_error: _Optional[str] = ..., reconcile_error_at: _Optional[float] = ..., capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("region",)
    REGION_FIELD_NUMBER: _ClassVar[int]
    region: str
    def __init__(self, region: _Optional[str] = ...) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("seq", "at", "actor", "action", "resource", "tenant", "before_digest", "after_digest", "detail", "actor_note")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AFTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_NOTE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: float
    actor: str
    action: str
    resource: str
    tenant: str
    before_digest: str
    after_digest: str
    detail: str
    actor_note: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[float] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., resource: _Optional[str] = ..., tenant: _Optional[str] = ..., before_digest: _Optional[str] = ..., after_digest: _Optional[str] = ..., detail: _Optional[str] = ..., actor_note: _Optional[str] = ...) -> None: ...

class QueryAuditRequest(_message.Message):
    __slots__ = ("tenant", "limit")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    limit: int
    def __init__(self, tenant: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryAuditReply(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...

class TelemetryPoint(_message.Message):
    __slots__ = ("at", "turns", "errors", "p95_ms")
    AT_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    at: float
    turns: int
    errors: int
    p95_ms: float
    def __init__(self, at: _Optional[float] = ..., turns: _Optional[int] = ..., errors: _Optional[int] = ..., p95_ms: _Optional[float] = ...) -> None: ...

class TelemetrySeries(_message.Message):
    __slots__ = ("tenant", "scenario", "model_version", "turns", "errors", "mean_latency_ms", "p50_ms", "p95_ms", "fallback_rate", "handoff_rate", "mean_confidence", "feedback", "mean_rating", "corrected_accuracy", "points")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_RATE_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    MEAN_RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    scenario: str
    model_version: str
    turns: int
    errors: int
    mean_latency_ms: float
    p50_ms: float
    p95_ms: float
    fallback_rate: float
    handoff_rate: float
    mean_confidence: float
    feedback: int
    mean_rating: float
    corrected_accuracy: float
    points: _containers.RepeatedCompositeFieldContainer[TelemetryPoint]
    def __init__(self, tenant: _Optional[str] = ..., scenario: _Optional[str] = ..., model_version: _Optional[str] = ..., turns: _Optional[int] = ..., errors: _Optional[int] = ..., mean_latency_ms: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., fallback_rate: _Optional[float] = ..., handoff_rate: _Optional[float] = ..., mean_confidence: _Optional[float] = ..., feedback: _Optional[int] = ..., mean_rating: _Optional[float] = ..., corrected_accuracy: _Optional[float] = ..., points: _Optional[_Iterable[_Union[TelemetryPoint, _Mapping]]] = ...) -> None: ...

class QueryTelemetryRequest(_message.Message):
    __slots__ = ("tenant", "since_s", "bucket_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SINCE_S_FIELD_NUMBER: _ClassVar[int]
    BUCKET_S_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    since_s: float
    bucket_s: float
    def __init__(self, tenant: _Optional[str] = ..., since_s: _Optional[float] = ..., bucket_s: _Optional[float] = ...) -> None: ...

class QueryTelemetryReply(_message.Message):
    __slots__ = ("series", "nodes_reporting", "dropped")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    NODES_REPORTING_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[TelemetrySeries]
    nodes_reporting: int
    dropped: int
    def __init__(self, series: _Optional[_Iterable[_Union[TelemetrySeries, _Mapping]]] = ..., nodes_reporting: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ControlPlaneStatus(_message.Message):
    __slots__ = ("replica", "leader", "is_leader", "software_version", "caller", "caller_role", "auth_failures")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALLER_ROLE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FAILURES_FIELD_NUMBER: _ClassVar[int]
    replica: str
    leader: str
    is_leader: bool
    software_version: str
    caller: str
    caller_role: str
    auth_failures: int
    def __init__(self, replica: _Optional[str] = ..., leader: _Optional[str] = ..., is_leader: _Optional[bool] = ..., software_version: _Optional[str] = ..., caller: _Optional[str] = ..., caller_role: _Optional[str] = ..., auth_failures: _Optional[int] = ...) -> None: ...

class OperatorToken(_message.Message):
    __slots__ = ("name", "role", "created_at", "created_by", "revoked", "revoked_at", "revoked_by", "expires_at", "previous_expires_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    created_at: float
    created_by: str
    revoked: bool
    revoked_at: float
    revoked_by: str
    expires_at: float
    previous_expires_at: float
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., created_at: _Optional[float] = ..., created_by: _Optional[str] = ..., revoked: _Optional[bool] = ..., revoked_at: _Optional[float] = ..., revoked_by: _Optional[str] = ..., expires_at: _Optional[float] = ..., previous_expires_at: _Optional[float] = ...) -> None: ...

class IssueOperatorTokenRequest(_message.Message):
    __slots__ = ("name", "role", "replace", "ttl_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    replace: bool
    ttl_s: float
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., replace: _Optional[bool] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class RotateOperatorTokenRequest(_message.Message):
    __slots__ = ("name", "overlap_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    overlap_s: float
    def __init__(self, name: _Optional[str] = ..., overlap_s: _Optional[float] = ...) -> None: ...

class IssueOperatorTokenReply(_message.Message):
    __slots__ = ("info", "token")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    info: OperatorToken
    token: str
    def __init__(self, info: _Optional[_Union[OperatorToken, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListOperatorTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOperatorTokensReply(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[OperatorToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[OperatorToken, _Mapping]]] = ...) -> None: ...

class RevokeOperatorTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RolloutWave(_message.Message):
    __slots__ = ("regions", "node_share")
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    NODE_SHARE_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedScalarFieldContainer[str]
    node_share: float
    def __init__(self, regions: _Optional[_Iterable[str]] = ..., node_share: _Optional[float] = ...) -> None: ...

class RolloutStep(_message.Message):
    __slots__ = ("weight", "bake_s")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BAKE_S_FIELD_NUMBER: _ClassVar[int]
    weight: float
    bake_s: float
    def __init__(self, weight: _Optional[float] = ..., bake_s: _Optional[float] = ...) -> None: ...

class RolloutMember(_message.Message):
    __slots__ = ("node_id", "region", "wave", "weight", "converged")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    region: str
    wave: int
    weight: float
    converged: bool
    def __init__(self, node_id: _Optional[str] = ..., region: _Optional[str] = ..., wave: _Optional[int] = ..., weight: _Optional[float] = ..., converged: _Optional[bool] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "tenant", "phase", "wave", "step", "weight", "target", "waves", "steps", "baseline", "step_started_at", "converged_at", "created_at", "created_by", "updated_at", "updated_by", "reason", "term", "finalized", "members", "excluded_nodes", "nodes_converged", "nodes_total", "sessions_canary", "sessions_baseline", "switched", "history", "target_config_version", "policy")
    class TargetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class BaselineEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ScenarioModels
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ScenarioModels, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    FINALIZED_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_NODES_FIELD_NUMBER: _ClassVar[int]
    NODES_CONVERGED_FIELD_NUMBER: _ClassVar[int]
    NODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_CANARY_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_BASELINE_FIELD_NUMBER: _ClassVar[int]
    SWITCHED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    TARGET_CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant: str
    phase: str
    wave: int
    step: int
    weight: float
    target: _containers.ScalarMap[str, str]
    waves: _containers.RepeatedCompositeFieldContainer[RolloutWave]
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStep]
    baseline: _containers.MessageMap[str, ScenarioModels]
    step_started_at: float
    converged_at: float
    created_at: float
    created_by: str
    updated_at: float
    updated_by: str
    reason: str
    term: int
    finalized: bool
    members: _containers.RepeatedCompositeFieldContainer[RolloutMember]
    excluded_nodes: _containers.RepeatedScalarFieldContainer[str]
    nodes_converged: int
    nodes_total: int
    sessions_canary: int
    sessions_baseline: int
    switched: int
    history: _containers.RepeatedScalarFieldContainer[str]
    target_config_version: int
    policy: str
    def __init__(self, id: _Optional[str] = ..., tenant: _Optional[str] = ..., phase: _Optional[str] = ..., wave: _Optional[int] = ..., step: _Optional[int] = ..., weight: _Optional[float] = ..., target: _Optional[_Mapping[str, str]] = ..., waves: _Optional[_Iterable[_Union[RolloutWave, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[RolloutStep, _Mapping]]] = ..., baseline: _Optional[_Mapping[str, ScenarioModels]] = ..., step_started_at: _Optional[float] = ..., converged_at: _Optional[float] = ..., created_at: _Optional[float] = ..., created_by: _Optional[str] = ..., updated_at: _Optional[float] = ..., updated_by: _Optional[str] = ..., reason: _Optional[str] = ..., term: _Optional[int] = ..., finalized: _Optional[bool] = ..., members: _Optional[_Iterable[_Union[RolloutMember, _Mapping]]] = ..., excluded_nodes: _Optional[_Iterable[str]] = ..., nodes_converged: _Optional[int] = ..., nodes_total: _Optional[int] = ..., sessions_canary: _Optional[int] = ..., sessions_baseline: _Optional[int] = ..., switched: _Optional[int] = ..., history: _Optional[_Iterable[str]] = ..., target_config_version: _Optional[int] = ..., policy: _Optional[str] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("tenant", "models", "waves", "steps", "reason", "config_version", "policy")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    models: _containers.ScalarMap[str, str]
    waves: _containers.RepeatedCompositeFieldContainer[RolloutWave]
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStep]
    reason: str
    config_version: int
    policy: str
    def __init__(self, tenant: _Optional[str] = ..., models: _Optional[_Mapping[str, str]] = ..., waves: _Optional[_Iterable[_Union[RolloutWave, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[RolloutStep, _Mapping]]] = ..., reason: _Optional[str] = ..., config_version: _Optional[int] = ..., policy: _Optional[str] = ...) -> None: ...

class CanaryMetric(_message.Message):
    __slots__ = ("metric", "canary_events", "canary_trials", "baseline_events", "baseline_trials", "canary_rate", "baseline_rate", "diff", "lower", "upper", "p_value", "tolerance", "enough", "worse", "within")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    CANARY_EVENTS_FIELD_NUMBER: _ClassVar[int]
    CANARY_TRIALS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_TRIALS_FIELD_NUMBER: _ClassVar[int]
    CANARY_RATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_RATE_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    ENOUGH_FIELD_NUMBER: _ClassVar[int]
    WORSE_FIELD_NUMBER: _ClassVar[int]
    WITHIN_FIELD_NUMBER: _ClassVar[int]
    metric: str
    canary_events: float
    canary_trials: float
    baseline_events: float
    baseline_trials: float
    canary_rate: float
    baseline_rate: float
    diff: float
    lower: float
    upper: float
    p_value: float
    tolerance: float
    enough: bool
    worse: bool
    within: bool
    def __init__(self, metric: _Optional[str] = ..., canary_events: _Optional[float] = ..., canary_trials: _Optional[float] = ..., baseline_events: _Optional[float] = ..., baseline_trials: _Optional[float] = ..., canary_rate: _Optional[float] = ..., baseline_rate: _Optional[float] = ..., diff: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., p_value: _Optional[float] = ..., tolerance: _Optional[float] = ..., enough: _Optional[bool] = ..., worse: _Optional[bool] = ..., within: _Optional[bool] = ...) -> None: ...

class SampleRatio(_message.Message):
    __slots__ = ("scope", "canary", "baseline", "expected_canary", "chi2", "p_value", "mismatch", "chi2_p")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CANARY_FIELD_NUMBER: _ClassVar[int]
    CHI2_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    MISMATCH_FIELD_NUMBER: _ClassVar[int]
    CHI2_P_FIELD_NUMBER: _ClassVar[int]
    scope: str
    canary: int
    baseline: int
    expected_canary: float
    chi2: float
    p_value: float
    mismatch: bool
    chi2_p: float
    def __init__(self, scope: _Optional[str] = ..., canary: _Optional[int] = ..., baseline: _Optional[int] = ..., expected_canary: _Optional[float] = ..., chi2: _Optional[float] = ..., p_value: _Optional[float] = ..., mismatch: _Optional[bool] = ..., chi2_p: _Optional[float] = ...) -> None: ...

class RolloutAnalysis(_message.Message):
    __slots__ = ("rollout_id", "policy", "at", "action", "reasons", "canary_sessions", "baseline_sessions", "metrics", "sample_ratio")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    CANARY_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATIO_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    policy: str
    at: float
    action: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    canary_sessions: int
    baseline_sessions: int
    metrics: _containers.RepeatedCompositeFieldContainer[CanaryMetric]
    sample_ratio: _containers.RepeatedCompositeFieldContainer[SampleRatio]
    def __init__(self, rollout_id: _Optional[str] = ..., policy: _Optional[str] = ..., at: _Optional[float] = ..., action: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., canary_sessions: _Optional[int] = ..., baseline_sessions: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[CanaryMetric, _Mapping]]] = ..., sample_ratio: _Optional[_Iterable[_Union[SampleRatio, _Mapping]]] = ...) -> None: ...

class ListCanaryPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CanaryPolicy(_message.Message):
    __slots__ = ("name", "alpha", "advance_alpha", "tolerance", "min_trials", "min_sessions", "hard_error_rate", "hard_error_turns", "srm_p", "step_limit_s", "srm_min_sessions", "min_bake_s", "stored")
    class ToleranceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    ADVANCE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MIN_TRIALS_FIELD_NUMBER: _ClassVar[int]
    MIN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    HARD_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    HARD_ERROR_TURNS_FIELD_NUMBER: _ClassVar[int]
    SRM_P_FIELD_NUMBER: _ClassVar[int]
    STEP_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    SRM_MIN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_BAKE_S_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    name: str
    alpha: float
    advance_alpha: float
    tolerance: _containers.ScalarMap[str, float]
    min_trials: int
    min_sessions: int
    hard_error_rate: float
    hard_error_turns: int
    srm_p: float
    step_limit_s: float
    srm_min_sessions: int
    min_bake_s: float
    stored: bool
    def __init__(self, name: _Optional[str] = ..., alpha: _Optional[float] = ..., advance_alpha: _Optional[float] = ..., tolerance: _Optional[_Mapping[str, float]] = ..., min_trials: _Optional[int] = ..., min_sessions: _Optional[int] = ..., hard_error_rate: _Optional[float] = ..., hard_error_turns: _Optional[int] = ..., srm_p: _Optional[float] = ..., step_limit_s: _Optional[float] = ..., srm_min_sessions: _Optional[int] = ..., min_bake_s: _Optional[float] = ..., stored: _Optional[bool] = ...) -> None: ...

class ListCanaryPoliciesReply(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[CanaryPolicy]
    def __init__(self, policies: _Optional[_Iterable[_Union[CanaryPolicy, _Mapping]]] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("tenant", "active_only")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    active_only: bool
    def __init__(self, tenant: _Optional[str] = ..., active_only: _Optional[bool] = ...) -> None: ...

class ListRolloutsReply(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class CommandRolloutRequest(_message.Message):
    __slots__ = ("rollout_id", "command", "reason")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    command: str
    reason: str
    def __init__(self, rollout_id: _Optional[str] = ..., command: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RegionHealth(_message.Message):
    __slots__ = ("region", "state", "since", "drained", "evidence", "relapses", "countdown_s", "serves_traffic", "replication_lag_s", "replicating")
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    RELAPSES_FIELD_NUMBER: _ClassVar[int]
    COUNTDOWN_S_FIELD_NUMBER: _ClassVar[int]
    SERVES_TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_LAG_S_FIELD_NUMBER: _ClassVar[int]
    REPLICATING_FIELD_NUMBER: _ClassVar[int]
    region: str
    state: str
    since: float
    drained: bool
    evidence: str
    relapses: int
    countdown_s: float
    serves_traffic: bool
    replication_lag_s: float
    replicating: bool
    def __init__(self, region: _Optional[str] = ..., state: _Optional[str] = ..., since: _Optional[float] = ..., drained: _Optional[bool] = ..., evidence: _Optional[str] = ..., relapses: _Optional[int] = ..., countdown_s: _Optional[float] = ..., serves_traffic: _Optional[bool] = ..., replication_lag_s: _Optional[float] = ..., replicating: _Optional[bool] = ...) -> None: ...

class TenantRoute(_message.Message):
    __slots__ = ("tenant", "region", "state", "epoch", "home", "reason", "since")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    region: str
    state: str
    epoch: int
    home: str
    reason: str
    since: float
    def __init__(self, tenant: _Optional[str] = ..., region: _Optional[str] = ..., state: _Optional[str] = ..., epoch: _Optional[int] = ..., home: _Optional[str] = ..., reason: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class GetFailoverStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FailoverStatus(_message.Message):
    __slots__ = ("regions", "routes")
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[RegionHealth]
    routes: _containers.RepeatedCompositeFieldContainer[TenantRoute]
    def __init__(self, regions: _Optional[_Iterable[_Union[RegionHealth, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[TenantRoute, _Mapping]]] = ...) -> None: ...

class RegionActionRequest(_message.Message):
    __slots__ = ("region",)
    REGION_FIELD_NUMBER: _ClassVar[int]
    region: str
    def __init__(self, region: _Optional[str] = ...) -> None: ...

class AlertMessage(_message.Message):
    __slots__ = ("id", "kind", "severity", "at", "tenant", "resource", "title", "detail_json", "acked_by", "acked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    ACKED_BY_FIELD_NUMBER: _ClassVar[int]
    ACKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    severity: str
    at: float
    tenant: str
    resource: str
    title: str
    detail_json: str
    acked_by: str
    acked_at: float
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., severity: _Optional[str] = ..., at: _Optional[float] = ..., tenant: _Optional[str] = ..., resource: _Optional[str] = ..., title: _Optional[str] = ..., detail_json: _Optional[str] = ..., acked_by: _Optional[str] = ..., acked_at: _Optional[float] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("tenant", "unacked", "limit")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    UNACKED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    unacked: bool
    limit: int
    def __init__(self, tenant: _Optional[str] = ..., unacked: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAlertsReply(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[AlertMessage]
    def __init__(self, alerts: _Optional[_Iterable[_Union[AlertMessage, _Mapping]]] = ...) -> None: ...

class AckAlertRequest(_message.Message):
    __slots__ = ("id", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    note: str
    def __init__(self, id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...
