"""Round timing of a deployment (`FEDBATCH_TIMING`) and the bench's split of a round."""

from __future__ import annotations

import json

import pytest

from fedbatch.bench.deployment import CPU_PARTS, PARTS, split_rounds, summarize
from fedbatch.federated.timing import (
    TIMING_ENV,
    ClientTimeline,
    collected_timelines,
    server_exchange,
)


def client(message_id, start, cpu=(0.0, 0.0, 0.0, 0.0), **marks):
    """A ClientApp's line: wall marks `start` + offsets, CPU seconds at each mark."""
    line = {"kind": "client", "message_id": message_id, "type": "train"}
    for name, offset in marks.items():
        line[name] = start + offset
    for name, seconds in zip(("imports_start", "handler", "data", "trained"), cpu, strict=True):
        line[f"{name}_cpu"] = seconds
    return line


def test_a_round_splits_at_its_slowest_client():
    marks = {"process_start": 1.0, "imports_start": 2.0, "handler": 3.5, "data": 4.0}
    marks |= {"trained": 4.25, "returned": 4.5}
    lines = [
        {"kind": "server", "phase": "query.describe", "sent": 0.0, "replies": {}},
        {"kind": "server", "phase": "train", "sent": 0.0, "replies": {"a": 1.0}},
        # Round 2, sent at 100: "b" replies at 106, "c" (the slowest) at 107.
        {"kind": "server", "phase": "train", "sent": 100.0, "replies": {"b": 106.0, "c": 107.0}},
        client("b", 100.0, **marks),
        client("c", 100.5, cpu=(1.0, 2.5, 3.0, 3.25), **marks),
    ]
    rows = [{"round": 0, "seconds": None}, {"round": 1, "seconds": 9.0}]
    rows.append({"round": 2, "seconds": 7.5})
    (split,) = split_rounds(rows, lines)
    # c: started 101.5 (1.5 s after the send), returned 105.0, its reply at 107.0.
    assert split["polling"] == pytest.approx(1.5 + 2.0)
    assert split["flower_startup"] == pytest.approx(1.0)
    assert split["fedbatch_imports"] == pytest.approx(1.5)
    assert split["data"] == pytest.approx(0.5)
    assert split["training"] == pytest.approx(0.25)
    assert split["reply"] == pytest.approx(0.25)
    assert split["server"] == pytest.approx(7.5 - 7.0)
    assert split["round"] == 7.5
    parts = ("polling", "flower_startup", "fedbatch_imports", "data", "training", "reply")
    assert sum(split[p] for p in (*parts, "server")) == pytest.approx(7.5)
    cpu = {p: split[f"cpu_{p}"] for p in ("flower_startup", "fedbatch_imports", "data")}
    assert cpu == pytest.approx({"flower_startup": 1.0, "fedbatch_imports": 1.5, "data": 0.5})
    assert split["cpu_training"] == pytest.approx(0.25)


def test_the_targets_ratios_take_each_rounds_own_polling_off_before_the_median():
    def split(round_seconds, polling, startup):
        parts = dict.fromkeys((*PARTS, *(f"cpu_{p}" for p in CPU_PARTS)), 0.0)
        return parts | {"round": round_seconds, "polling": polling, "flower_startup": startup}

    rounds = [split(5.0, 3.0, 1.9), split(6.0, 4.0, 1.9), split(7.0, 3.5, 1.0)]
    summary = summarize(rounds, baseline=0.05)
    # Per round without polling: 2.0, 2.0, 3.5 (median 2.0; the medians' difference, 6.0 -
    # 3.5 = 2.5, is no round's); without Flower's start-up too: 0.1, 0.1, 2.5.
    assert summary["round_without_polling"] == pytest.approx(2.0)
    assert summary["ratio"] == pytest.approx(2.0 / 0.05)
    assert summary["fedbatch_seconds"] == pytest.approx(0.1)
    assert summary["ratio_without_flower_startup"] == pytest.approx(0.1 / 0.05)
    assert summary["polling"] == 3.5 and summary["rounds_measured"] == 3


def test_without_the_variable_nothing_is_noted(monkeypatch, tmp_path):
    monkeypatch.delenv(TIMING_ENV, raising=False)
    timeline = ClientTimeline.begin("m", "train", (1.0, 0.5))
    timeline.mark("data")
    timeline.write()
    server_exchange(1.0, "train", {"m": 2.0})
    assert timeline.fields is None and not any(tmp_path.iterdir())


def test_with_the_variable_each_side_appends_one_line(monkeypatch, tmp_path):
    path = tmp_path / "timing.jsonl"
    monkeypatch.setenv(TIMING_ENV, str(path))
    server_exchange(1.0, "train", {"m": 2.0})
    timeline = ClientTimeline.begin("m", "train", (1.0, 0.5))
    timeline.mark("data")
    timeline.mark("trained", round=3)
    timeline.write()
    timeline.write()  # once only: also registered to run at exit
    server, line = (json.loads(text) for text in path.read_text().splitlines())
    assert server == {"kind": "server", "phase": "train", "sent": 1.0, "replies": {"m": 2.0}}
    assert line["message_id"] == "m" and line["round"] == 3
    assert line["imports_start"] == 1.0 and line["imports_start_cpu"] == 0.5
    assert line["handler"] <= line["data"] <= line["trained"] <= line["exit"]
    assert line["handler_cpu"] <= line["data_cpu"] <= line["trained_cpu"]
    assert line["process_start"] <= line["handler"]


def test_a_node_worker_s_marks_join_the_line_of_the_process_that_handed_it_the_message(
    monkeypatch, tmp_path
):
    path = tmp_path / "timing.jsonl"
    monkeypatch.setenv(TIMING_ENV, str(path))
    with collected_timelines() as lines:  # in the worker: kept, not written
        worker = ClientTimeline.begin("m", "train", (0.0, 0.0))
        worker.mark("data")
        worker.mark("trained", round=2)
        worker.mark("returned")
    assert not path.exists() and lines[0]["round"] == 2
    forwarder = ClientTimeline.begin("m", "train", (1.0, 0.5))
    forwarder.absorb(lines[0])
    forwarder.mark("returned")
    forwarder.write()
    (line,) = (json.loads(text) for text in path.read_text().splitlines())
    assert line["worker_round"] == 2 and line["imports_start"] == 1.0
    assert line["worker_handler"] <= line["worker_data"] <= line["worker_returned"]
    assert line["worker_returned"] <= line["returned"]
    assert "worker_imports_start" not in line and "worker_message_id" not in line


def test_a_round_handed_to_a_node_worker_splits_with_the_hand_off():
    # The forwarding process: started 101.5, imports 102.0, handler 102.25, back 103.5;
    # the worker: handler 102.5, data 102.75, trained 103.0, returned 103.25.
    c = {"kind": "client", "message_id": "c", "type": "train", "process_start": 101.5}
    c |= {"imports_start": 102.0, "handler": 102.25, "returned": 103.5}
    c |= {"imports_start_cpu": 1.0, "handler_cpu": 1.25}
    for mark, at, cpu in (("handler", 102.5, 10.0), ("data", 102.75, 10.25)):
        c |= {f"worker_{mark}": at, f"worker_{mark}_cpu": cpu}
    c |= {"worker_trained": 103.0, "worker_trained_cpu": 10.5, "worker_returned": 103.25}
    lines = [
        {"kind": "server", "phase": "train", "sent": 0.0, "replies": {"a": 1.0}},
        {"kind": "server", "phase": "train", "sent": 100.0, "replies": {"c": 104.0}},
        c,
    ]
    rows = [{"round": 1, "seconds": 2.0}, {"round": 2, "seconds": 4.5}]
    (split,) = split_rounds(rows, lines)
    expected = {"polling": 1.5 + 0.5, "flower_startup": 0.5, "fedbatch_imports": 0.25}
    expected |= {"handoff": 0.25 + 0.25, "data": 0.25, "training": 0.25, "reply": 0.25}
    expected |= {"server": 0.5, "cpu_fedbatch_imports": 0.25, "cpu_data": 0.25}
    assert {k: split[k] for k in expected} == pytest.approx(expected)
    assert sum(split[k] for k in expected if not k.startswith("cpu")) == pytest.approx(4.5)
