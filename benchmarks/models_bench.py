"""Model pipeline targets: accuracy, INT8 vs FP32, latency at batch 1 on one thread, size.

    python benchmarks/models_bench.py            # measure the bundles in ./kefu-data/models
    python benchmarks/models_bench.py --build    # build the three defaults first (needs torch)

Every figure is measured in this run on this machine (accuracy on each model's held-out dev
set, latency with one intra-op thread, 500 samples after warm-up); nothing is read back from a
file except the FP32 reference accuracy that training measured on the same dev set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kefu.models.defaults import banking77_data, demo_shop_data, sentiment_data
from kefu.models.evaluation import evaluate
from kefu.models.runtime import RuntimeOptions, load_model
from kefu.models.store import ModelStore, data_dir, trust_for

TARGETS = {
    # name: (metric, minimum, latency p50 max ms at batch 1 by family)
    "banking77-intent": ("accuracy", 0.93),
    "demo-shop-intent": ("accuracy", 0.95),
    "sentiment": ("macro_f1", 0.85),
}
P50_MAX_MS = {"minilm": 3.0, "ngram": 0.5}
DEV = {
    "banking77-intent": banking77_data,
    "demo-shop-intent": demo_shop_data,
    "sentiment": sentiment_data,
}


def mark(ok: bool) -> str:
    return "ok  " if ok else "MISS"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir")
    ap.add_argument("--build", action="store_true", help="run kefu model build-defaults first")
    ap.add_argument("--fast", action="store_true", help="with --build: small family for banking77")
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    d = data_dir(args.data_dir)
    if args.build:
        from kefu.cli import main as kefu

        cmd = ["model", "build-defaults", "--data-dir", str(d)] + (["--fast"] if args.fast else [])
        t0 = time.perf_counter()
        if kefu(cmd) != 0:
            return 1
        print(f"build-defaults took {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    trust = trust_for(d)
    store = ModelStore(d / "models", trust)
    rows = []
    for name, (metric, minimum) in TARGETS.items():
        try:
            path = store.resolve(name)
        except Exception as exc:
            print(f"{name}: not available ({exc})", file=sys.stderr)
            continue
        model = load_model(
            path, trust=trust, options=RuntimeOptions(providers=("cpu",), intra_op_threads=1)
        )
        _, dev = DEV[name]()
        r = evaluate(model, dev, rounds=args.rounds)
        m = model.manifest
        fam = m.family
        size = sum(f["size"] for f in m.files.values())
        drop = m.metrics["fp32_accuracy"] - r["accuracy"]
        rows.append(
            {
                "model": m.ref,
                "family": fam,
                "dev_rows": r["n"],
                metric: r[metric],
                "target": minimum,
                "metric": metric,
                "accuracy": r["accuracy"],
                "macro_f1": r["macro_f1"],
                "ece": r["ece"],
                "int8_drop_pts": 100 * drop,
                "p50_ms": r["latency"]["batch_1"]["p50_ms"],
                "p99_ms": r["latency"]["batch_1"]["p99_ms"],
                "b32_p50_ms": r["latency"]["batch_32"]["p50_ms"],
                "p50_target_ms": P50_MAX_MS[fam],
                "bundle_mb": size / 1e6,
                "train_seconds": m.metrics.get("train_seconds"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"\n{row['model']}  ({row['family']}, dev {row['dev_rows']} rows)")
        print(
            f"  {mark(row[row['metric']] >= row['target'])} {row['metric']:<9} "
            f"{100 * row[row['metric']]:6.2f} %"
            f"   target >= {100 * row['target']:.0f} %   (accuracy {100 * row['accuracy']:.2f} %,"
            f" macro-F1 {100 * row['macro_f1']:.2f} %, ECE {row['ece']:.3f})"
        )
        print(
            f"  {mark(row['int8_drop_pts'] <= 1.0)} INT8 vs FP32 accuracy drop "
            f"{row['int8_drop_pts']:+.2f} pts   target <= 1"
        )
        print(
            f"  {mark(row['p50_ms'] <= row['p50_target_ms'])} latency batch 1, 1 thread: "
            f"p50 {row['p50_ms']:.3f} ms"
            f"  p99 {row['p99_ms']:.3f} ms   target p50 <= {row['p50_target_ms']} ms"
            f"   (batch 32 p50 {row['b32_p50_ms']:.2f} ms)"
        )
        print(
            f"  {mark(row['bundle_mb'] <= 30)} bundle {row['bundle_mb']:.1f} MB   target <= 30 MB"
        )
        if row["train_seconds"] is not None:
            print(f"       trained in {row['train_seconds']:.0f} s (2 threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
