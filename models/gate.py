"""The regression gate that precedes any canary: is a candidate no worse than its baseline?

Pure: compares two evaluation reports (as produced by ``evaluate``) on the same dataset.
Default tolerances, stated in every result:

* accuracy may drop by at most 1.0 point;
* macro-F1 may drop by at most 1.0 point;
* no single class's recall may drop by more than 10 points (classes with >= 5 examples);
* median (p50) latency at batch 1 may grow by at most 50 % plus 0.5 ms of measurement noise
  (p50, not p99: two separate runs' p99 differ by more than a real regression on a busy host).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GateCheck", "GateResult", "GateTolerance", "compare"]


@dataclass(kw_only=True, frozen=True)
class GateTolerance:
    accuracy_drop: float = 0.01
    macro_f1_drop: float = 0.01
    class_recall_drop: float = 0.10
    class_min_support: int = 5
    latency_ratio: float = 1.5
    latency_slack_ms: float = 0.5
    check_latency: bool = True


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    candidate: float
    baseline: float
    limit: str


@dataclass
class GateResult:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    tolerance: GateTolerance = field(default_factory=GateTolerance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "tolerance": asdict(self.tolerance),
        }

    @property
    def failures(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]


def compare(
    candidate: dict[str, Any], baseline: dict[str, Any], tol: GateTolerance | None = None
) -> GateResult:
    tol = tol or GateTolerance()
    checks: list[GateCheck] = []

    def drop_check(name: str, key: str, limit: float) -> None:
        c, b = float(candidate[key]), float(baseline[key])
        checks.append(
            GateCheck(
                name, c >= b - limit - 1e-12, c, b, f"may drop by at most {limit * 100:.1f} pts"
            )
        )

    same_labels = set(candidate["labels"]) == set(baseline["labels"])
    checks.append(
        GateCheck(
            "label set",
            same_labels,
            len(candidate["labels"]),
            len(baseline["labels"]),
            "candidate and baseline must predict the same labels",
        )
    )
    drop_check("accuracy", "accuracy", tol.accuracy_drop)
    drop_check("macro-F1", "macro_f1", tol.macro_f1_drop)
    if same_labels:
        for lab, b in baseline["per_class"].items():
            if b["support"] < tol.class_min_support:
                continue
            c = candidate["per_class"][lab]["recall"]
            if c < b["recall"] - tol.class_recall_drop - 1e-12:
                checks.append(
                    GateCheck(
                        f"recall[{lab}]",
                        False,
                        c,
                        b["recall"],
                        f"may drop by at most {tol.class_recall_drop * 100:.0f} pts",
                    )
                )
    if tol.check_latency and "latency" in candidate and "latency" in baseline:
        c = candidate["latency"]["batch_1"]["p50_ms"]
        b = baseline["latency"]["batch_1"]["p50_ms"]
        limit = b * tol.latency_ratio + tol.latency_slack_ms
        checks.append(
            GateCheck(
                "p50 latency (batch 1)",
                c <= limit,
                c,
                b,
                f"at most {tol.latency_ratio:.2f}x baseline + {tol.latency_slack_ms} ms",
            )
        )
    return GateResult(all(c.passed for c in checks), checks, tol)
