"""``kefu demo traffic``: the simulated customers' pure parts (session scripts, the rating and
feedback model, the overload policy, the summary) and one run against a real node over gRPC,
whose feedback reaches the node's store."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from kefu.cli import main
from kefu.demo.customers import (
    CustomerModel,
    SessionResult,
    Summary,
    TurnResult,
    Utterance,
    admit,
    feedback_for,
    percentile,
    rating_for,
    script_session,
)
from kefu.demo.traffic import TrafficOptions, TrafficRun, default_data, load_utterances
from kefu.errors import DatasetError
from kefu.node.dialog.tenant import demo_key_path
from kefu.node.serving.server import Node

POOL = {
    "zh": [
        Utterance("我的快递到哪了", "delivery_tracking", "zh"),
        Utterance("退款", "return_refund", "zh"),
    ],
    "en": [Utterance("where is my parcel", "delivery_tracking", "en")],
}


def _turns(understood: list[bool], handoff: bool = False) -> list[TurnResult]:
    return [
        TurnResult(seq=2 * i + 2, expected="invoice", predicted="invoice" if ok else "greeting",
                   latency_ms=5.0, handoff=handoff and i == len(understood) - 1)
        for i, ok in enumerate(understood)
    ]  # fmt: skip


def test_scripts_are_2_to_4_turns_in_one_language_and_seeded() -> None:
    rng = random.Random(1)
    scripts = [script_session(POOL, rng) for _ in range(300)]
    assert {len(s.turns) for s in scripts} == {2, 3, 4}
    assert all({u.lang for u in s.turns} == {s.lang} for s in scripts)
    langs = Counter(s.lang for s in scripts)
    assert langs["zh"] > langs["en"] > 0  # weighted by what the data has
    again = [script_session(POOL, random.Random(1)) for _ in range(1)]
    assert again[0] == scripts[0]
    with pytest.raises(ValueError, match="没有可回放"):
        script_session({"zh": []}, rng)


def test_the_default_data_is_the_demo_tenants_labelled_zh_en_dev_set() -> None:
    data = load_utterances(default_data())
    assert set(data) == {"zh", "en"}
    intents = {u.intent for rows in data.values() for u in rows}
    assert {"delivery_tracking", "return_refund", "human_agent", "out_of_scope"} <= intents


def test_a_bad_data_file_names_its_line(tmp_path: Path) -> None:
    p = tmp_path / "u.jsonl"
    p.write_text('{"text": "hi", "label": "greeting"}\n{"text": "no label"}\n', encoding="utf-8")
    with pytest.raises(DatasetError) as e:
        load_utterances(p)
    assert e.value.line == 2 and "u.jsonl" in str(e.value)


def test_ratings_depend_on_whether_the_bot_understood() -> None:
    rng = random.Random(7)
    happy = [rating_for(1.0, rng) for _ in range(4000)]
    unhappy = [rating_for(0.0, rng) for _ in range(4000)]
    low = lambda rs: sum(r <= 2 for r in rs) / len(rs)  # noqa: E731
    # Known answers: P(≤ 2★) = 0.03 when understood, 0.75 when not (± 4 standard errors).
    assert abs(low(happy) - 0.03) < 4 * (0.03 * 0.97 / 4000) ** 0.5
    assert abs(low(unhappy) - 0.75) < 4 * (0.75 * 0.25 / 4000) ** 0.5
    assert set(happy) <= {1, 2, 3, 4, 5}


def test_feedback_corrects_every_wrong_turn_and_samples_right_ones() -> None:
    model = CustomerModel(correct_wrong=1.0, review_right=0.0, rated_share=1.0, resolved_share=1.0)
    fb = feedback_for(_turns([True, False, False]), random.Random(3), model)
    assert fb.corrections == ((4, "invoice"), (6, "invoice"))
    assert 1 <= fb.rating <= 5 and fb.resolved is not None
    # reviewed right turns are confirmed with their own (right) intent
    fb = feedback_for(_turns([True, True]), random.Random(3), CustomerModel(review_right=1.0))
    assert fb.corrections == ((2, "invoice"), (4, "invoice"))
    # no turns, no feedback; a handed-off session is resolved with the low probability
    assert feedback_for([], random.Random(1), model).rating == 0
    handed = CustomerModel(resolved_share=1.0, resolved_if_understood=1.0, resolved_if_not=0.0)
    assert feedback_for(_turns([True], handoff=True), random.Random(1), handed).resolved is False
    assert feedback_for(_turns([True]), random.Random(1), handed).resolved is True
    with pytest.raises(ValueError, match="须在"):
        CustomerModel(rated_share=1.5)


def test_overload_policy_and_summary() -> None:
    assert admit(3, 4, "shed") == "start"
    assert admit(4, 4, "shed") == "shed"
    assert admit(4, 4, "wait") == "wait"
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([], 50) == 0.0
    s = Summary(seconds=2.0)
    s.add(SessionResult(node="n", turns=_turns([True, False])))
    j = s.to_json()
    assert (j["sessions"], j["turns"], j["accuracy"], j["sessions_per_s"]) == (1, 2, 0.5, 0.5)
    assert any("意图准确率" in line and "50.0%" in line for line in s.lines())


def test_bad_arguments_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "traffic", "--key", "k", "--rate", "0"]) != 0
    err = capsys.readouterr().err
    assert "--rate" in err and "Traceback" not in err
    assert main(["demo", "traffic", "--key-file", "/nonexistent/k"]) != 0
    assert "API" in capsys.readouterr().err


async def test_traffic_against_a_real_node_submits_feedback(node: Node) -> None:
    key = demo_key_path(node.options.data_dir, "demo-shop").read_text(encoding="utf-8").strip()
    seen: list[SessionResult] = []
    opts = TrafficOptions(
        targets=[f"127.0.0.1:{node.port}"], key=key, rate=200.0, sessions=30, concurrency=8,
        overload="wait", seed=5, customers=CustomerModel(rated_share=1.0, review_right=1.0),
    )  # fmt: skip
    summary = await TrafficRun(opts, on_session=seen.append).run()
    # "wait": a session due while 8 are in flight waits for a slot, none is shed
    assert (summary.sessions, summary.shed, summary.errors) == (30, 0, 0)
    assert len(seen) == 30
    assert 2 * summary.sessions <= summary.turns <= 4 * summary.sessions
    # The shipped intent model understands most held-out utterances.
    assert summary.accuracy > 0.7, summary.to_json()
    assert summary.rated == summary.sessions  # every session rated
    assert all(t.model_version.startswith("demo-shop-intent@") for s in seen for t in s.turns)
    # Read back from the node's SQLite: every correction and rating was stored.
    assert node.registry is not None
    tenant = node.registry.tenants["demo-shop"]
    stored = [fb for s in seen for fb in await tenant.store.list_feedback(s.session_id)]
    assert sum(fb.corrected_intent is not None for fb in stored) == summary.corrections > 0
    assert sum(fb.rating is not None for fb in stored) == summary.rated
