"""An example Python plugin (entry point ``service-hours`` in the ``kefu.plugins`` group).

It answers whether human agents are on duty (daily 9:00–22:00 Beijing time), so a flow or a
template can say so. Shows the whole interface a Python plugin implements.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kefu.node.dialog.plugin_api import PluginReply, PluginRequest

__all__ = ["service_hours"]

_BEIJING = timedelta(hours=8)
_OPEN, _CLOSE = 9, 22


async def service_hours(request: PluginRequest) -> PluginReply:
    at = request.inputs.get("at")
    now = datetime.fromisoformat(at) if at else datetime.now(UTC)
    hour = (now.astimezone(UTC) + _BEIJING).hour
    on_duty = _OPEN <= hour < _CLOSE
    return PluginReply(
        data={
            "on_duty": "yes" if on_duty else "no",
            "hours": {"zh": "每天 9:00–22:00（北京时间）", "en": "daily 9:00–22:00 Beijing time"},
        }
    )
