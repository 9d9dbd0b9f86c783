import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_WEB: _ClassVar[Channel]
    CHANNEL_APP: _ClassVar[Channel]
    CHANNEL_MINI_PROGRAM: _ClassVar[Channel]
    CHANNEL_SOCIAL: _ClassVar[Channel]
    CHANNEL_API: _ClassVar[Channel]

class SessionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATUS_UNSPECIFIED: _ClassVar[SessionStatus]
    SESSION_STATUS_ACTIVE: _ClassVar[SessionStatus]
    SESSION_STATUS_HANDOFF: _ClassVar[SessionStatus]
    SESSION_STATUS_ENDED: _ClassVar[SessionStatus]
    SESSION_STATUS_EXPIRED: _ClassVar[SessionStatus]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_BOT: _ClassVar[Role]
    ROLE_AGENT: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]

class HandoffStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HANDOFF_STATUS_UNSPECIFIED: _ClassVar[HandoffStatus]
    HANDOFF_STATUS_WAITING: _ClassVar[HandoffStatus]
    HANDOFF_STATUS_CLAIMED: _ClassVar[HandoffStatus]
    HANDOFF_STATUS_CLOSED: _ClassVar[HandoffStatus]

class HandoffResolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HANDOFF_RESOLUTION_UNSPECIFIED: _ClassVar[HandoffResolution]
    HANDOFF_RESOLUTION_RESOLVED: _ClassVar[HandoffResolution]
    HANDOFF_RESOLUTION_UNRESOLVED: _ClassVar[HandoffResolution]
    HANDOFF_RESOLUTION_RETURNED_TO_BOT: _ClassVar[HandoffResolution]
    HANDOFF_RESOLUTION_ABANDONED: _ClassVar[HandoffResolution]
CHANNEL_UNSPECIFIED: Channel
CHANNEL_WEB: Channel
CHANNEL_APP: Channel
CHANNEL_MINI_PROGRAM: Channel
CHANNEL_SOCIAL: Channel
CHANNEL_API: Channel
SESSION_STATUS_UNSPECIFIED: SessionStatus
SESSION_STATUS_ACTIVE: SessionStatus
SESSION_STATUS_HANDOFF: SessionStatus
SESSION_STATUS_ENDED: SessionStatus
SESSION_STATUS_EXPIRED: SessionStatus
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_BOT: Role
ROLE_AGENT: Role
ROLE_SYSTEM: Role
HANDOFF_STATUS_UNSPECIFIED: HandoffStatus
HANDOFF_STATUS_WAITING: HandoffStatus
HANDOFF_STATUS_CLAIMED: HandoffStatus
HANDOFF_STATUS_CLOSED: HandoffStatus
HANDOFF_RESOLUTION_UNSPECIFIED: HandoffResolution
HANDOFF_RESOLUTION_RESOLVED: HandoffResolution
HANDOFF_RESOLUTION_UNRESOLVED: HandoffResolution
HANDOFF_RESOLUTION_RETURNED_TO_BOT: HandoffResolution
HANDOFF_RESOLUTION_ABANDONED: HandoffResolution

class Sentiment(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("type", "value", "normalized", "start", "end")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    type: str
    value: str
    normalized: str
    start: int
    end: int
    def __init__(self, type: _Optional[str] = ..., value: _Optional[str] = ..., normalized: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class ConverseRequest(_message.Message):
    __slots__ = ("session_id", "channel", "user_id", "text", "entry_path", "metadata", "language", "request_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_PATH_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    channel: Channel
    user_id: str
    text: str
    entry_path: str
    metadata: _containers.ScalarMap[str, str]
    language: str
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., user_id: _Optional[str] = ..., text: _Optional[str] = ..., entry_path: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., language: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ConverseReply(_message.Message):
    __slots__ = ("session_id", "text", "language", "intent", "confidence", "sentiment", "scenario", "entities", "handoff", "handoff_reason", "model_versions", "server_latency_us", "turn_seq", "request_id", "kb_entry_id", "clarify", "handoff_id")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SERVER_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    TURN_SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KB_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CLARIFY_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    text: str
    language: str
    intent: str
    confidence: float
    sentiment: Sentiment
    scenario: str
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    handoff: bool
    handoff_reason: str
    model_versions: _containers.ScalarMap[str, str]
    server_latency_us: int
    turn_seq: int
    request_id: str
    kb_entry_id: str
    clarify: bool
    handoff_id: str
    def __init__(self, session_id: _Optional[str] = ..., text: _Optional[str] = ..., language: _Optional[str] = ..., intent: _Optional[str] = ..., confidence: _Optional[float] = ..., sentiment: _Optional[_Union[Sentiment, _Mapping]] = ..., scenario: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., handoff: _Optional[bool] = ..., handoff_reason: _Optional[str] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., server_latency_us: _Optional[int] = ..., turn_seq: _Optional[int] = ..., request_id: _Optional[str] = ..., kb_entry_id: _Optional[str] = ..., clarify: _Optional[bool] = ..., handoff_id: _Optional[str] = ...) -> None: ...

class Typing(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class HandoffNotice(_message.Message):
    __slots__ = ("session_id", "handoff_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    handoff_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., handoff_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ConverseEvent(_message.Message):
    __slots__ = ("typing", "reply", "handoff")
    TYPING_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    typing: Typing
    reply: ConverseReply
    handoff: HandoffNotice
    def __init__(self, typing: _Optional[_Union[Typing, _Mapping]] = ..., reply: _Optional[_Union[ConverseReply, _Mapping]] = ..., handoff: _Optional[_Union[HandoffNotice, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("seq", "role", "text", "language", "intent", "confidence", "sentiment", "scenario", "entities", "handoff", "handoff_reason", "model_versions", "server_latency_us", "created_at", "request_id", "kb_entry_id", "clarify", "agent_id")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SERVER_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KB_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CLARIFY_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    role: Role
    text: str
    language: str
    intent: str
    confidence: float
    sentiment: Sentiment
    scenario: str
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    handoff: bool
    handoff_reason: str
    model_versions: _containers.ScalarMap[str, str]
    server_latency_us: int
    created_at: _timestamp_pb2.Timestamp
    request_id: str
    kb_entry_id: str
    clarify: bool
    agent_id: str
    def __init__(self, seq: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., text: _Optional[str] = ..., language: _Optional[str] = ..., intent: _Optional[str] = ..., confidence: _Optional[float] = ..., sentiment: _Optional[_Union[Sentiment, _Mapping]] = ..., scenario: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., handoff: _Optional[bool] = ..., handoff_reason: _Optional[str] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., server_latency_us: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., kb_entry_id: _Optional[str] = ..., clarify: _Optional[bool] = ..., agent_id: _Optional[str] = ...) -> None: ...

class SessionView(_message.Message):
    __slots__ = ("session_id", "status", "channel", "user_id", "created_at", "updated_at", "ended_at", "expires_at", "scenario", "language", "entry_path", "slots", "turns", "handoff_id")
    class SlotsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_PATH_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    status: SessionStatus
    channel: Channel
    user_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    scenario: str
    language: str
    entry_path: str
    slots: _containers.ScalarMap[str, str]
    turns: _containers.RepeatedCompositeFieldContainer[Turn]
    handoff_id: str
    def __init__(self, session_id: _Optional[str] = ..., status: _Optional[_Union[SessionStatus, str]] = ..., channel: _Optional[_Union[Channel, str]] = ..., user_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scenario: _Optional[str] = ..., language: _Optional[str] = ..., entry_path: _Optional[str] = ..., slots: _Optional[_Mapping[str, str]] = ..., turns: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., handoff_id: _Optional[str] = ...) -> None: ...

class EndSessionRequest(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EndSessionReply(_message.Message):
    __slots__ = ("session_id", "status", "ended_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    status: SessionStatus
    ended_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., status: _Optional[_Union[SessionStatus, str]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("session_id", "turn_seq", "rating", "resolved", "corrected_intent", "comment")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_SEQ_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_INTENT_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_seq: int
    rating: int
    resolved: bool
    corrected_intent: str
    comment: str
    def __init__(self, session_id: _Optional[str] = ..., turn_seq: _Optional[int] = ..., rating: _Optional[int] = ..., resolved: _Optional[bool] = ..., corrected_intent: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class SubmitFeedbackReply(_message.Message):
    __slots__ = ("feedback_id",)
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    def __init__(self, feedback_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "user_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: SessionStatus
    user_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[SessionStatus, str]] = ..., user_id: _Optional[str] = ...) -> None: ...

class SessionSummary(_message.Message):
    __slots__ = ("session_id", "status", "channel", "user_id", "created_at", "updated_at", "turn_count", "scenario", "language", "last_intent")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    TURN_COUNT_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_INTENT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    status: SessionStatus
    channel: Channel
    user_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    turn_count: int
    scenario: str
    language: str
    last_intent: str
    def __init__(self, session_id: _Optional[str] = ..., status: _Optional[_Union[SessionStatus, str]] = ..., channel: _Optional[_Union[Channel, str]] = ..., user_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., turn_count: _Optional[int] = ..., scenario: _Optional[str] = ..., language: _Optional[str] = ..., last_intent: _Optional[str] = ...) -> None: ...

class ListSessionsReply(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionSummary]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Handoff(_message.Message):
    __slots__ = ("handoff_id", "session_id", "status", "reason", "agent_id", "channel", "user_id", "scenario", "language", "last_user_text", "created_at", "claimed_at", "closed_at", "resolution", "note", "summary")
    HANDOFF_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_USER_TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    handoff_id: str
    session_id: str
    status: HandoffStatus
    reason: str
    agent_id: str
    channel: Channel
    user_id: str
    scenario: str
    language: str
    last_user_text: str
    created_at: _timestamp_pb2.Timestamp
    claimed_at: _timestamp_pb2.Timestamp
    closed_at: _timestamp_pb2.Timestamp
    resolution: HandoffResolution
    note: str
    summary: HandoffSummary
    def __init__(self, handoff_id: _Optional[str] = ..., session_id: _Optional[str] = ..., status: _Optional[_Union[HandoffStatus, str]] = ..., reason: _Optional[str] = ..., agent_id: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., user_id: _Optional[str] = ..., scenario: _Optional[str] = ..., language: _Optional[str] = ..., last_user_text: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., claimed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolution: _Optional[_Union[HandoffResolution, str]] = ..., note: _Optional[str] = ..., summary: _Optional[_Union[HandoffSummary, _Mapping]] = ...) -> None: ...

class HandoffSummary(_message.Message):
    __slots__ = ("intents", "sentiments", "sentiment_trend", "slots", "open_flow", "plugin_failures", "last_messages")
    class SlotsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    SENTIMENTS_FIELD_NUMBER: _ClassVar[int]
    SENTIMENT_TREND_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    OPEN_FLOW_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    intents: _containers.RepeatedScalarFieldContainer[str]
    sentiments: _containers.RepeatedScalarFieldContainer[str]
    sentiment_trend: str
    slots: _containers.ScalarMap[str, str]
    open_flow: str
    plugin_failures: _containers.RepeatedScalarFieldContainer[str]
    last_messages: _containers.RepeatedCompositeFieldContainer[Turn]
    def __init__(self, intents: _Optional[_Iterable[str]] = ..., sentiments: _Optional[_Iterable[str]] = ..., sentiment_trend: _Optional[str] = ..., slots: _Optional[_Mapping[str, str]] = ..., open_flow: _Optional[str] = ..., plugin_failures: _Optional[_Iterable[str]] = ..., last_messages: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ...) -> None: ...

class ListHandoffsRequest(_message.Message):
    __slots__ = ("status", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: HandoffStatus
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[_Union[HandoffStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHandoffsReply(_message.Message):
    __slots__ = ("handoffs", "next_page_token")
    HANDOFFS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    handoffs: _containers.RepeatedCompositeFieldContainer[Handoff]
    next_page_token: str
    def __init__(self, handoffs: _Optional[_Iterable[_Union[Handoff, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ClaimHandoffRequest(_message.Message):
    __slots__ = ("handoff_id", "agent_id")
    HANDOFF_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    handoff_id: str
    agent_id: str
    def __init__(self, handoff_id: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class AgentReplyRequest(_message.Message):
    __slots__ = ("handoff_id", "session_id", "agent_id", "text", "request_id")
    HANDOFF_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    handoff_id: str
    session_id: str
    agent_id: str
    text: str
    request_id: str
    def __init__(self, handoff_id: _Optional[str] = ..., session_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., text: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AgentReplyReply(_message.Message):
    __slots__ = ("session_id", "turn_seq", "created_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_seq: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., turn_seq: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CloseHandoffRequest(_message.Message):
    __slots__ = ("handoff_id", "resolution", "agent_id", "note")
    HANDOFF_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    handoff_id: str
    resolution: HandoffResolution
    agent_id: str
    note: str
    def __init__(self, handoff_id: _Optional[str] = ..., resolution: _Optional[_Union[HandoffResolution, str]] = ..., agent_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...
