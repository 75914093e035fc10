"""Round timing of a deployment (`FEDBATCH_TIMING`) and the bench's split of a round."""

from __future__ import annotations

import json

import pytest

from fedbatch.bench.deployment import split_rounds
from fedbatch.federated.timing import TIMING_ENV, ClientTimeline, server_exchange


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
