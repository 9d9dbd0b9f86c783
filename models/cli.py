"""``kefu model ...``: train, evaluate, gate, sign, verify, compile and list model bundles."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kefu.bundle import sign_bundle, verify_bundle
from kefu.errors import PermanentError, ProviderUnavailable
from kefu.keys import SigningKey, TrustStore, generate_keypair, load_signing_key
from kefu.models.progress import progress_bar
from kefu.models.store import default_version

GATE_FAILED = 3


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (default: $KEFU_DATA_DIR or ./kefu-data)")
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PUB",
        help="extra trusted public key file (repeatable)",
    )


def _ctx(args: argparse.Namespace) -> tuple[Path, TrustStore]:
    from kefu.models.store import data_dir, trust_for

    d = data_dir(args.data_dir)
    return d, trust_for(d, args.trust)


def _store(args: argparse.Namespace):
    """The local store, with the shipped default bundles copied in on first use."""
    from kefu.models.store import ModelStore

    d, trust = _ctx(args)
    store = ModelStore(d / "models", trust)
    for path in store.seed_shipped():
        print(f"installed shipped bundle {path}", file=sys.stderr)
    return store


def local_signing_key(data: Path, key_path: str | None) -> SigningKey:
    """The key given by --key, else ``<data>/keys/local.key`` (created and trusted on first use)."""
    if key_path:
        return load_signing_key(Path(key_path))
    path = data / "keys" / "local.key"
    if path.exists():
        return load_signing_key(path)
    sk = generate_keypair(data / "keys", "local")
    trusted = data / "trusted-keys"
    trusted.mkdir(parents=True, exist_ok=True)
    (trusted / "local.pub").write_text(sk.public.to_line(), encoding="utf-8")
    print(f"created signing key {path} (id {sk.public.key_id}) and trusted it", file=sys.stderr)
    return sk


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from kefu.models.dataset import load_dataset
    from kefu.models.store import ModelStore
    from kefu.models.training import TrainConfig, train_bundle

    data, trust = _ctx(args)
    train = load_dataset(args.data, text_col=args.text_col, label_col=args.label_col)
    dev = (
        load_dataset(args.dev, text_col=args.text_col, label_col=args.label_col)
        if args.dev
        else None
    )
    key = local_signing_key(data, args.key)
    trust.add(key.public)
    version = args.version or default_version()
    store = ModelStore(data / "models", trust)
    out = Path(args.out) if args.out else store.root / args.name / version
    cfg = TrainConfig(
        family=args.family,
        epochs=args.epochs,
        freeze=args.freeze,
        quantize=not args.no_quantize,
        threads=args.threads,
        seed=args.seed,
    )
    with progress_bar(not args.json and sys.stderr.isatty()) as report:
        result = train_bundle(
            train,
            dev,
            name=args.name,
            version=version,
            task=args.task,
            out_dir=out,
            config=cfg,
            signing_key=key,
            progress=report,
        )
    m = result.manifest.metrics
    summary = {
        "name": args.name,
        "version": version,
        "path": str(out),
        "family": args.family,
        "seconds": round(result.seconds, 2),
        "timings": result.timings,
        "accuracy": result.report["accuracy"],
        "macro_f1": result.report["macro_f1"],
        "fp32_accuracy": m["fp32_accuracy"],
        "quantization_accuracy_change": m["quantization_accuracy_change"],
        "latency": result.report["latency"],
        "size_bytes": m["size_bytes"],
    }
    if args.json:
        _print_json(summary)
    else:
        print(f"bundle   {out}  ({m['size_bytes'] / 1e6:.1f} MB, {m['precision']})")
        print(f"trained  {result.timings['train_s']:.1f} s, total {result.seconds:.1f} s")
        print(
            f"dev      accuracy {_pct(result.report['accuracy'])}  "
            f"macro-F1 {_pct(result.report['macro_f1'])}"
        )
        print(
            f"int8     accuracy change vs fp32: {100 * m['quantization_accuracy_change']:+.2f} pts"
            f" (fp32 {_pct(m['fp32_accuracy'])})"
        )
        b1 = result.report["latency"]["batch_1"]
        print(f"latency  batch 1, 1 thread: p50 {_ms(b1['p50_ms'])}  p99 {_ms(b1['p99_ms'])}")
    return 0


# ----------------------------------------------------------------------------- eval / predict


def _load(args: argparse.Namespace, ref: str, threads: int = 1):
    from kefu.models.runtime import RuntimeOptions, load_model

    store = _store(args)
    providers = tuple(p.strip() for p in getattr(args, "providers", "cpu").split(","))
    return load_model(
        store.resolve(ref),
        trust=store.trust,
        options=RuntimeOptions(providers=providers, intra_op_threads=threads),
    )


def _eval_report(args: argparse.Namespace, ref: str) -> dict[str, Any]:
    from kefu.models.dataset import load_dataset
    from kefu.models.evaluation import evaluate

    model = _load(args, ref, threads=args.threads)
    data = load_dataset(args.data, text_col=args.text_col, label_col=args.label_col)
    data.check_labels(model.labels)
    return evaluate(model, data, rounds=args.rounds)


def _print_report(r: dict[str, Any]) -> None:
    print(f"model     {r['model']}   data {r['dataset']['path']} ({r['n']} rows)")
    print(f"accuracy  {_pct(r['accuracy'])}   macro-F1 {_pct(r['macro_f1'])}   ECE {r['ece']:.4f}")
    lat = r.get("latency")
    if lat:
        for k in ("batch_1", "batch_32"):
            print(
                f"latency   {k.replace('_', ' '):<9} {lat['threads']} thread: "
                f"p50 {_ms(lat[k]['p50_ms'])}  p99 {_ms(lat[k]['p99_ms'])}"
            )
    print(f"{'class':<28}{'precision':>10}{'recall':>9}{'f1':>8}{'n':>6}")
    for lab, c in r["per_class"].items():
        if c["support"]:
            print(
                f"{lab:<28}{_pct(c['precision']):>10}{_pct(c['recall']):>9}{_pct(c['f1']):>8}{c['support']:>6}"
            )
    labels, conf = r["labels"], r["confusion"]
    pairs = sorted(
        (
            (conf[i][j], labels[i], labels[j])
            for i in range(len(labels))
            for j in range(len(labels))
            if i != j and conf[i][j]
        ),
        reverse=True,
    )[:10]
    if pairs:
        print("most confused (true → predicted):")
        for n, a, b in pairs:
            print(f"  {n:>4}  {a} → {b}")


def cmd_eval(args: argparse.Namespace) -> int:
    r = _eval_report(args, args.bundle)
    if args.json:
        _print_json(r)
    else:
        _print_report(r)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = _load(args, args.bundle)
    texts = (
        args.text
        if args.text != ["-"]
        else sys.stdin.buffer.read().decode("utf-8", "replace").splitlines()
    )
    preds = model.predict(texts)
    if args.json:
        _print_json(
            [
                {"text": t, **p.to_dict(), "model": model.ref}
                for t, p in zip(texts, preds, strict=True)
            ]
        )
    else:
        for t, p in zip(texts, preds, strict=True):
            top = sorted(p.distribution.items(), key=lambda kv: -kv[1])[:3]
            alts = ", ".join(f"{k} {v:.2f}" for k, v in top[1:])
            note = "  (empty text)" if p.empty_input else ""
            print(f"{p.label:<22} {p.probability:.3f}  [{alts}]  {t!r}{note}")
    return 0


# ----------------------------------------------------------------------------- gate


def cmd_gate(args: argparse.Namespace) -> int:
    from kefu.models.gate import GateTolerance, compare

    tol = GateTolerance(
        accuracy_drop=args.accuracy_drop / 100,
        macro_f1_drop=args.f1_drop / 100,
        class_recall_drop=args.class_recall_drop / 100,
        check_latency=not args.no_latency,
        latency_ratio=args.latency_ratio,
    )
    cand = _eval_report(args, args.candidate)
    base = _eval_report(args, args.baseline)
    result = compare(cand, base, tol)
    if args.json:
        _print_json({**result.to_dict(), "candidate": cand["model"], "baseline": base["model"]})
    else:
        print(f"gate: {cand['model']} vs baseline {base['model']} on {cand['dataset']['path']}")
        for c in result.checks:
            mark = "PASS" if c.passed else "FAIL"
            print(
                f"  {mark}  {c.name:<24} candidate {c.candidate:.4f}  "
                f"baseline {c.baseline:.4f}  ({c.limit})"
            )
        print(
            "result: "
            + (
                "PASS"
                if result.passed
                else "FAIL (candidate is worse than baseline beyond tolerance)"
            )
        )
    return 0 if result.passed else GATE_FAILED


# --------------------------------------------------------------- sign / verify / compile / list


def cmd_sign(args: argparse.Namespace) -> int:
    data, _ = _ctx(args)
    key = local_signing_key(data, args.key)
    rec = sign_bundle(Path(args.bundle), key)
    print(f"signed {args.bundle} with key {rec['key_id']}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = _store(args)
    m = verify_bundle(store.resolve(args.bundle), store.trust)
    if args.json:
        _print_json({"ok": True, "name": m.name, "version": m.version, "files": m.files})
    else:
        print(f"OK  {m.ref}: signature valid, {len(m.files)} files match their SHA-256")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from kefu.models.runtime import RuntimeOptions, load_model

    if not args.tensorrt:
        raise PermanentError("nothing to compile: pass --tensorrt")
    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in available:
        raise ProviderUnavailable(
            "TensorRT is not available on this machine (onnxruntime providers: "
            f"{', '.join(available)}); install onnxruntime-gpu and TensorRT on a GPU host"
        )
    store = _store(args)
    path = store.resolve(args.bundle)
    cache = Path(args.engine_cache or path / "trt-cache")
    model = load_model(
        path,
        trust=store.trust,
        options=RuntimeOptions(
            providers=("tensorrt",),
            trt_engine_cache_dir=str(cache),
            trt_fp16=args.fp16,
            strict=True,
        ),
    )
    # Building happens on first run per shape profile: run the typical batch sizes once.
    for n in (1, 8, 32):
        model.predict_proba(["warm up 预热"] * n)
    print(f"TensorRT engines for {model.ref} cached in {cache}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = [e.to_dict() for e in store.entries()]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no bundles in {store.root} (try: kefu model build-defaults)")
        return 0
    print(
        f"{'name':<20}{'version':<18}{'family':<8}{'accuracy':>9}{'macro-F1':>9}"
        f"{'p50 b1':>10}{'size':>8}  status"
    )
    for r in rows:
        mt = r["metrics"]
        size = f"{mt['size_bytes'] / 1e6:.1f}MB" if mt["size_bytes"] else "-"
        status = "verified" if r["verified"] else f"REFUSED: {r['problem']}"
        print(
            f"{r['name']:<20}{r['version']:<18}{r['family'] or '-':<8}{_pct(mt['accuracy']):>9}"
            f"{_pct(mt['macro_f1']):>9}{_ms(mt['p50_ms_batch1']):>10}{size:>8}  {status}"
        )
    return 0


def cmd_build_defaults(args: argparse.Namespace) -> int:
    from kefu.models.defaults import build_defaults

    data, trust = _ctx(args)
    key = local_signing_key(data, args.key)
    trust.add(key.public)
    results = build_defaults(
        data / "models",
        key=key,
        only=args.only,
        fast=args.fast,
        version=args.version,
        progress=not args.json and sys.stderr.isatty(),
        out_root=Path(args.out) if args.out else None,
    )
    if args.json:
        _print_json(results)
    else:
        for r in results:
            print(
                f"{r['name']:<20}{r['version']:<18}{r['family']:<8} accuracy {_pct(r['accuracy'])} "
                f"macro-F1 {_pct(r['macro_f1'])}  "
                f"int8 change {100 * r['quantization_accuracy_change']:+.2f} pts"
                f"  p50 {_ms(r['p50_ms_batch1'])}  {r['seconds']:.0f} s  {r['path']}"
            )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="train, evaluate, sign and manage model bundles")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def data_cols(q: argparse.ArgumentParser) -> None:
        q.add_argument("--text-col", help="text column (default: text)")
        q.add_argument(
            "--label-col", help="label column (default: label/category/intent/sentiment)"
        )

    t = verbs.add_parser("train", help="train a bundle from a labelled CSV/TSV/JSONL file")
    t.add_argument("--data", required=True, help="training data file")
    t.add_argument("--dev", help="held-out dev file (default: a 10%% stratified split)")
    t.add_argument("--name", required=True)
    t.add_argument("--version", help="default: UTC timestamp")
    t.add_argument("--task", default="intent")
    t.add_argument("--family", choices=("ngram", "minilm"), default="ngram")
    t.add_argument("--freeze", action="store_true", help="minilm: train only the head")
    t.add_argument("--epochs", type=int)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=13)
    t.add_argument("--no-quantize", action="store_true", help="ship fp32 instead of INT8")
    t.add_argument("--key", help="signing key (default: <data-dir>/keys/local.key)")
    t.add_argument("--out", help="bundle directory (default: into the model store)")
    t.add_argument("--json", action="store_true")
    data_cols(t)
    _common(t)
    t.set_defaults(handler=cmd_train)

    e = verbs.add_parser("eval", help="accuracy, macro-F1, per-class, confusion, ECE, latency")
    e.add_argument("bundle", help="bundle directory or store reference name[@version]")
    e.add_argument("--data", required=True)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--rounds", type=int, default=200, help="latency samples at batch 1")
    e.add_argument("--json", action="store_true")
    data_cols(e)
    _common(e)
    e.set_defaults(handler=cmd_eval)

    pr = verbs.add_parser("predict", help="classify texts")
    pr.add_argument("bundle")
    pr.add_argument(
        "--text", action="append", required=True, help="text (repeatable; '-' reads stdin lines)"
    )
    pr.add_argument("--providers", default="cpu", help="preference order, e.g. tensorrt,cuda,cpu")
    pr.add_argument("--json", action="store_true")
    _common(pr)
    pr.set_defaults(handler=cmd_predict)

    g = verbs.add_parser("gate", help="fail (exit 3) when a candidate is worse than its baseline")
    g.add_argument("candidate")
    g.add_argument("--baseline", required=True)
    g.add_argument("--data", required=True)
    g.add_argument(
        "--accuracy-drop", type=float, default=1.0, help="max accuracy drop, points (1.0)"
    )
    g.add_argument("--f1-drop", type=float, default=1.0, help="max macro-F1 drop, points (1.0)")
    g.add_argument(
        "--class-recall-drop",
        type=float,
        default=10.0,
        help="max per-class recall drop, points (10)",
    )
    g.add_argument(
        "--latency-ratio", type=float, default=1.5, help="max p50 latency ratio at batch 1 (1.5)"
    )
    g.add_argument("--no-latency", action="store_true", help="skip the latency check")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--rounds", type=int, default=200)
    g.add_argument("--json", action="store_true")
    data_cols(g)
    _common(g)
    g.set_defaults(handler=cmd_gate)

    s = verbs.add_parser("sign", help="sign a bundle's manifest with an Ed25519 key")
    s.add_argument("bundle")
    s.add_argument("--key", help="private key (default: <data-dir>/keys/local.key)")
    _common(s)
    s.set_defaults(handler=cmd_sign)

    v = verbs.add_parser("verify", help="check signature and file hashes")
    v.add_argument("bundle")
    v.add_argument("--json", action="store_true")
    _common(v)
    v.set_defaults(handler=cmd_verify)

    c = verbs.add_parser("compile", help="build TensorRT engines (GPU hosts only)")
    c.add_argument("bundle")
    c.add_argument("--tensorrt", action="store_true", required=True)
    c.add_argument("--engine-cache", help="engine cache directory (default: <bundle>/trt-cache)")
    c.add_argument("--fp16", action="store_true")
    _common(c)
    c.set_defaults(handler=cmd_compile)

    ls = verbs.add_parser("list", help="bundles in the local model store")
    ls.add_argument("--json", action="store_true")
    _common(ls)
    ls.set_defaults(handler=cmd_list)

    b = verbs.add_parser(
        "build-defaults", help="build demo-shop-intent, sentiment and banking77-intent"
    )
    b.add_argument(
        "--only", action="append", choices=("demo-shop-intent", "sentiment", "banking77-intent")
    )
    b.add_argument("--fast", action="store_true", help="small family for banking77 too (no MiniLM)")
    b.add_argument("--version")
    b.add_argument("--key")
    b.add_argument("--out", help="write bundles under this directory instead of the store")
    b.add_argument("--json", action="store_true")
    _common(b)
    b.set_defaults(handler=cmd_build_defaults)
