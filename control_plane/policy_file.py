"""``kefu cp rollout policy set NAME``: a canary-analysis policy from a YAML file and flags.

Pure (no gRPC, no NATS; reading the named file is the CLI's part): the built-in defaults,
overridden by the file's fields, overridden by the flags, validated as a whole by
:class:`~kefu.control_plane.canary.CanaryPolicy`. A bad file is refused before anything is
sent, with its line (``strict.yaml:4: field 'tolerance.fallback': ...``); a bad flag names the
flag. Example file::

    # kefu cp rollout policy set strict --file strict.yaml
    tolerance:          # per metric: how much worse (absolute rate) the canary may be
      error: 0.5%
      fallback: 3%
    min_trials: 200     # trials per arm before a metric decides anything
    min_sessions: 100   # sessions per arm before advancing
    min_bake_s: 600     # at least 10 min at every step
    step_limit_s: 7200  # pause as inconclusive after 2 h at one step
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from kefu.canary_stats import METRICS
from kefu.config.yamlsource import YamlDocument
from kefu.control_plane.canary import POLICY_NAME, CanaryPolicy
from kefu.errors import PermanentError

__all__ = ["PolicyFlags", "build_policy", "parse_rate", "validate_policy"]

#: Flag name → policy field, for the scalar flags.
SCALAR_FLAGS = {
    "alpha": "alpha",
    "min_trials": "min_trials",
    "min_sessions": "min_sessions",
    "bake": "min_bake_s",
    "step_limit": "step_limit_s",
}


def parse_rate(text: str) -> float:
    """``0.5%`` → 0.005; ``0.05`` → 0.05 (ValueError on anything else)."""
    t = text.strip()
    if t.endswith("%"):
        return float(t[:-1]) / 100.0
    return float(t)


def _percentages(doc: YamlDocument) -> dict[str, Any]:
    """The file's data with ``"3%"`` tolerances turned into rates (located errors)."""
    if not isinstance(doc.data, Mapping):
        raise doc.error("a policy file is a mapping of fields (tolerance:, min_trials:, ...)")
    data = dict(doc.data)
    tol = data.get("tolerance")
    if isinstance(tol, Mapping):
        rates: dict[str, Any] = {}
        for metric, value in tol.items():
            if isinstance(value, str):
                try:
                    value = parse_rate(value)
                except ValueError:
                    raise doc.error(
                        f"{value!r} is not a rate: write 0.03 or 3% / 应写为 0.03 或 3%",
                        ("tolerance", metric),
                    ) from None
            if metric not in METRICS:
                raise doc.error(
                    f"unknown metric {metric!r} / 未知指标 (one of {', '.join(METRICS)})",
                    ("tolerance", metric),
                )
            if not isinstance(value, int | float) or not 0.0 < value < 1.0:
                raise doc.error(
                    f"tolerance {value!r} must be a rate in (0, 1), e.g. 0.03 or 3% / "
                    "容差须在 (0, 1) 之间",
                    ("tolerance", metric),
                )
            rates[metric] = value
        data["tolerance"] = rates
    return data


class PolicyFlags:
    """The flags of ``policy set`` (each None / empty when not given)."""

    def __init__(self, *, tolerance: Sequence[str] = (), **scalars: float | int | None) -> None:
        self.tolerance = list(tolerance)
        self.scalars = {k: v for k, v in scalars.items() if v is not None}
        unknown = set(self.scalars) - set(SCALAR_FLAGS)
        if unknown:
            raise PermanentError(f"unknown policy flags {sorted(unknown)}")


def _flag_tolerances(specs: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for spec in specs:
        metric, sep, rate = spec.partition("=")
        metric = metric.strip()
        if not sep or metric not in METRICS:
            raise PermanentError(
                f"--tolerance {spec!r}: use METRIC=RATE, METRIC one of {', '.join(METRICS)} "
                "(e.g. fallback=3%) / 格式应为 指标=容差"
            )
        try:
            out[metric] = parse_rate(rate)
        except ValueError:
            raise PermanentError(
                f"--tolerance {spec!r}: {rate!r} is not a rate (0.03 or 3%) / 容差应为 0.03 或 3%"
            ) from None
    return out


def build_policy(name: str, doc: YamlDocument | None, flags: PolicyFlags) -> CanaryPolicy:
    """Defaults ← file ← flags; raise :class:`ConfigError` (file, with its line) or
    :class:`PermanentError` (a flag) when the result is not a valid policy."""
    if not POLICY_NAME.fullmatch(name):
        raise PermanentError(
            f"{name!r}: a policy name is lowercase letters, digits, '-' or '_', starting with a "
            "letter (at most 64) / 策略名须为小写字母、数字、'-' 或 '_'，以字母开头"
        )
    data: dict[str, Any] = {}
    if doc is not None:
        data = _percentages(doc)
        named = data.pop("name", name)
        if named != name:
            raise doc.error(
                f"the file names policy {named!r}, the command {name!r} / "
                "文件中的策略名与命令不一致",
                ("name",),
            )
        # Located errors for the file's own fields first (with the percentages converted).
        YamlDocument(path=doc.path, data={**data, "name": name}, lines=doc.lines).validate(
            CanaryPolicy
        )
    base = CanaryPolicy().tolerance
    tolerance = {**base, **data.get("tolerance", {}), **_flag_tolerances(flags.tolerance)}
    data["tolerance"] = tolerance
    for flag, value in flags.scalars.items():
        data[SCALAR_FLAGS[flag]] = value
    return validate_policy({**data, "name": name})


def validate_policy(doc: Mapping[str, Any]) -> CanaryPolicy:
    """The whole policy checked; every problem named by its field, in one line."""
    try:
        return CanaryPolicy.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'policy'}: {e['msg']}" for e in exc.errors()
        )
        raise PermanentError(f"canary policy {doc.get('name')!r}: {problems} / 策略无效") from exc
