"""Plugins: the calls a flow makes into the enterprise's systems (order center, ERP, CRM).

Two kinds, one result type:

* **HTTP plugins** declared in the tenant config (:class:`kefu.config.flows.PluginSpec`):
  method, path template on an integration's base URL, JSON body template, output mapping by
  dotted path (``{lang}`` in a path picks the customer's language). Auth headers come from a
  *secret reference* resolved by :class:`SecretStore`; secret values never reach a log line,
  an error message or a call record.
* **Python plugins** registered under the ``kefu.plugins`` entry-point group: an async
  callable taking a :class:`PluginRequest` and returning a :class:`PluginReply`.

:meth:`PluginRunner.call` never raises (except ``asyncio.CancelledError``): a back end that is
down, slow or answers garbage gives ``PluginOutcome.FAILED`` with a short code. The configured
timeout bounds the *whole* call, retries included; retries (with exponential backoff) happen
only for idempotent calls; a per-plugin circuit breaker fails fast while a back end is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from kefu import tracing
from kefu.config import TenantConfig
from kefu.config.flows import Integration, PluginSpec
from kefu.errors import ConfigError
from kefu.node.dialog.plugin_api import (
    PluginCall,
    PluginFunction,
    PluginOutcome,
    PluginReply,
    PluginRequest,
    PluginResult,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "CircuitBreaker",
    "PluginCall",
    "PluginFunction",
    "PluginOutcome",
    "PluginReply",
    "PluginRequest",
    "PluginResult",
    "PluginRunner",
    "SecretStore",
]

log = logging.getLogger("kefu.node.plugins")

ENTRY_POINT_GROUP = "kefu.plugins"


# ---------------------------------------------------------------- secrets, breaker


class SecretStore:
    """Secret values by name: ``KEFU_SECRET_<NAME>`` in the environment, else the file
    ``<dir>/<name>``, else ``extra`` (tests). Values are never logged."""

    def __init__(self, directory: Path | None = None, extra: Mapping[str, str] | None = None):
        self.directory = directory
        self._extra = dict(extra or {})

    def get(self, name: str) -> str | None:
        env = os.environ.get(f"KEFU_SECRET_{name.upper()}")
        if env:
            return env.strip()
        if self.directory is not None:
            path = self.directory / name
            if path.is_file():
                return path.read_text(encoding="utf-8").strip() or None
        return self._extra.get(name)


class CircuitBreaker:
    """Closed → open after ``failures`` failed calls in a row → half-open after
    ``reset_s`` (one trial call) → closed on success, open again on failure."""

    def __init__(
        self, *, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.failures, self.reset_s, self._clock = failures, reset_s, clock
        self._streak = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def record(self, ok: bool) -> None:
        self._trial = False
        if ok:
            self._streak, self._opened_at = 0, None
            return
        self._streak += 1
        if self._opened_at is not None or self._streak >= self.failures:
            self._opened_at = self._clock()


# ---------------------------------------------------------------- mapping


class _BadResponse(Exception):
    pass


def _lookup(data: Any, path: str) -> Any:
    cur = data
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif (
            isinstance(cur, list)
            and part.lstrip("-").isdigit()
            and -len(cur) <= int(part) < len(cur)
        ):
            cur = cur[int(part)]
        else:
            raise _BadResponse(f"missing {path}")
    return cur


def map_outputs(spec: PluginSpec, data: Any, lang: str) -> dict[str, str]:
    """The spec's outputs from a JSON document; a missing path is a bad response."""
    out: dict[str, str] = {}
    for name, path in spec.outputs.items():
        value = _lookup(data, path.replace("{lang}", lang))
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        out[name] = "" if value is None else str(value)
    return out


def _render(template: str, inputs: Mapping[str, str], *, url: bool) -> str:
    values = {k: quote(str(v), safe="") if url else str(v) for k, v in inputs.items()}
    return template.format_map(values)


# ---------------------------------------------------------------- runner


_RETRYABLE = frozenset({"timeout", "unavailable", "http_5xx", "http_429"})


class PluginRunner:
    """All plugins of one tenant. ``close`` is idempotent."""

    def __init__(self, config: TenantConfig, secrets: SecretStore | None = None):
        self.tenant = config.tenant.id
        self.specs = {p.id: p for p in config.plugins}
        self.integrations: dict[str, Integration] = dict(config.integrations)
        self.secrets = secrets or SecretStore()
        self.breakers = {
            p.id: CircuitBreaker(failures=p.circuit.failures, reset_s=p.circuit.reset_seconds)
            for p in config.plugins
        }
        self._python: dict[str, PluginFunction] = {}
        self._session: aiohttp.ClientSession | None = None
        self._load_python()

    def _load_python(self) -> None:
        wanted = {p.entry_point: p.id for p in self.specs.values() if p.kind == "python"}
        if not wanted:
            return
        found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        for name, pid in wanted.items():
            ep = found.get(str(name))
            if ep is None:
                raise ConfigError(
                    f"plugin {pid!r}: no entry point {name!r} in group {ENTRY_POINT_GROUP!r} "
                    f"(installed: {', '.join(sorted(found)) or 'none'})",
                    field=f"plugins.{pid}.entry_point",
                )
            fn = ep.load()
            if not callable(fn):
                raise ConfigError(f"plugin {pid!r}: entry point {name!r} is not callable")
            self._python[pid] = fn

    def base_url(self, name: str) -> str:
        integ = self.integrations[name]
        env = os.environ.get(integ.base_url_env) if integ.base_url_env else None
        return (env or integ.base_url).rstrip("/")

    def _timeout(self, spec: PluginSpec) -> float:
        if spec.timeout_seconds is not None:
            return spec.timeout_seconds
        if spec.integration is not None and spec.integration in self.integrations:
            return self.integrations[spec.integration].timeout_seconds
        return 3.0

    async def call(
        self, plugin_id: str, inputs: Mapping[str, str], *, lang: str
    ) -> tuple[PluginResult, PluginCall]:
        """Run one plugin; the result and the record of the call. Never raises."""
        spec = self.specs[plugin_id]
        started = time.perf_counter()
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        breaker = self.breakers[plugin_id]
        if not breaker.allow():
            result = PluginResult(outcome=PluginOutcome.FAILED, code="circuit_open")
        else:
            attrs = {"kefu.plugin": plugin_id, "kefu.tenant": self.tenant}
            with tracing.span("plugin call", attrs, kind="client") as span:
                result = await self._attempts(spec, inputs, lang)
                if span is not None:
                    span.set_attribute("kefu.outcome", result.outcome.value)
            breaker.record(result.outcome is not PluginOutcome.FAILED)
        latency = round((time.perf_counter() - started) * 1000.0, 2)
        result = PluginResult(
            outcome=result.outcome,
            values=result.values,
            code=result.code,
            latency_ms=latency,
            attempts=result.attempts,
        )
        record = PluginCall(
            plugin=plugin_id,
            at=at,
            outcome=result.outcome.value,
            code=result.code,
            latency_ms=latency,
            attempts=result.attempts,
        )
        if result.outcome is PluginOutcome.FAILED:
            log.warning(
                "plugin call failed",
                extra={"fields": {"tenant": self.tenant, **record.to_dict()}},
            )
        return result, record

    async def _attempts(
        self, spec: PluginSpec, inputs: Mapping[str, str], lang: str
    ) -> PluginResult:
        budget = self._timeout(spec)
        deadline = time.monotonic() + budget
        tries = 1 + (spec.retries if spec.is_idempotent else 0)
        result = PluginResult(outcome=PluginOutcome.FAILED, code="timeout")
        for attempt in range(1, tries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0.005:
                break
            try:
                async with asyncio.timeout(remaining):
                    result = await self._once(spec, inputs, lang, remaining)
            except TimeoutError:
                result = PluginResult(outcome=PluginOutcome.FAILED, code="timeout")
            result = PluginResult(
                outcome=result.outcome, values=result.values, code=result.code, attempts=attempt
            )
            if result.outcome is not PluginOutcome.FAILED or result.code not in _RETRYABLE:
                return result
            pause = spec.backoff_seconds * (2 ** (attempt - 1))
            if attempt < tries and deadline - time.monotonic() > pause:
                await asyncio.sleep(pause)
        return result

    async def _once(
        self, spec: PluginSpec, inputs: Mapping[str, str], lang: str, timeout_s: float
    ) -> PluginResult:
        if spec.kind == "python":
            return await self._python_once(spec, inputs, lang, timeout_s)
        return await self._http_once(spec, inputs, lang, timeout_s)

    async def _python_once(
        self, spec: PluginSpec, inputs: Mapping[str, str], lang: str, timeout_s: float
    ) -> PluginResult:
        fn = self._python[spec.id]
        try:
            reply = await fn(
                PluginRequest(
                    tenant=self.tenant,
                    plugin=spec.id,
                    inputs=dict(inputs),
                    lang=lang,
                    timeout_s=timeout_s,
                )
            )
            if not isinstance(reply, PluginReply):
                raise _BadResponse("not a PluginReply")
            values = (
                map_outputs(spec, reply.data, lang) if reply.outcome is PluginOutcome.OK else {}
            )
        except _BadResponse:
            return PluginResult(outcome=PluginOutcome.FAILED, code="bad_response")
        except (asyncio.CancelledError, TimeoutError):
            raise
        except Exception as exc:  # a third-party plugin's bug must not break the turn
            log.warning("python plugin %s raised %s", spec.id, type(exc).__name__)
            return PluginResult(outcome=PluginOutcome.FAILED, code="plugin_error")
        return PluginResult(outcome=reply.outcome, values=values, code=reply.code)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), raise_for_status=False
            )
        return self._session

    def _headers(self, integ: Integration) -> dict[str, str] | None:
        headers = {"Accept": "application/json", **integ.headers}
        if integ.auth is not None:
            secret = self.secrets.get(integ.auth.secret)
            if secret is None:
                return None
            headers[integ.auth.header] = f"{integ.auth.scheme} {secret}".strip()
        return headers

    async def _http_once(
        self, spec: PluginSpec, inputs: Mapping[str, str], lang: str, timeout_s: float
    ) -> PluginResult:
        assert spec.integration is not None
        integ = self.integrations[spec.integration]
        headers = self._headers(integ)
        if headers is None:
            return PluginResult(outcome=PluginOutcome.FAILED, code="secret_missing")
        if (traceparent := tracing.current_traceparent()) is not None:
            headers["traceparent"] = traceparent
        url = self.base_url(spec.integration) + _render(spec.path, inputs, url=True)
        body = {k: _render(v, inputs, url=False) for k, v in spec.body.items()} or None
        try:
            async with self._client().request(
                spec.method,
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return PluginResult(outcome=PluginOutcome.FAILED, code="timeout")
        except (aiohttp.ClientError, OSError):
            return PluginResult(outcome=PluginOutcome.FAILED, code="unavailable")
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            data = None
            if 200 <= status < 300:
                return PluginResult(outcome=PluginOutcome.FAILED, code="bad_response")
        code = _error_code(data)
        if status in (404, 410):
            return PluginResult(outcome=PluginOutcome.NOT_FOUND, code=code or "not_found")
        if status in (409, 422):
            return PluginResult(outcome=PluginOutcome.REJECTED, code=code or f"http_{status}")
        if status == 429 or status >= 500:
            return PluginResult(
                outcome=PluginOutcome.FAILED, code="http_429" if status == 429 else "http_5xx"
            )
        if not 200 <= status < 300:
            return PluginResult(outcome=PluginOutcome.FAILED, code=f"http_{status}")
        try:
            values = map_outputs(spec, data, lang)
        except _BadResponse:
            return PluginResult(outcome=PluginOutcome.FAILED, code="bad_response")
        return PluginResult(outcome=PluginOutcome.OK, values=values)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _error_code(data: Any) -> str:
    if isinstance(data, Mapping):
        err = data.get("error")
        if isinstance(err, Mapping) and isinstance(err.get("code"), str):
            return str(err["code"])[:64]
    return ""
