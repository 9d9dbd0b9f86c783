"""The access gateway (``kefu gateway run``, ``kefu-node gateway``): the channels customers
use — HTTP/JSON, WebSocket, the web chat widget, WeChat Official Accounts — in front of the
nodes of a region, which it reaches only through their gRPC API (``kefu.v1``).

Pure core: :mod:`.routing` (node pool, ejection, session ids that name their node),
:mod:`.answers` (gRPC status → HTTP error with zh/en text), :mod:`.identity` (signed customer
identities, allowed origins), :mod:`.traffic` (rate limits, bounded backlog), :mod:`.wechat`
(signatures, XML). Services: :mod:`.conversations`. Adapters: :mod:`.node_links` (gRPC
channels, health checks), :mod:`.http_api`, :mod:`.websocket`, :mod:`.wechat_http`,
:mod:`.app`, :mod:`.cli`.
"""
