"""The text task end to end: trains with and without bucketing, from the generated corpus
and from a local text file, and reports tokens per step and the padding fraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbatch.data.text import LONGEST_GENERATED
from fedbatch.engine import inprocess
from tests.conftest import read_rows, simulate, tiny_config

# sentences never longer than max_length: one row each (not cut into pieces)
DATA = {"name": "text", "num_samples": 240, "max_length": LONGEST_GENERATED}
TEXT = {
    "data": DATA | {"test_fraction": 0.2},
    "model": {"name": "gru", "width": 24},
    "client": {"batch_size": 8, "epochs": 1, "optimizer": "adam", "lr": 0.01},
    "num_clients": 4,
    "clients_per_round": 2,
    "rounds": 3,
    "device": "cpu",
}


def _rows(tmp_path: Path, bucket: bool) -> list[dict]:
    cfg = tiny_config(**TEXT | {"client": TEXT["client"] | {"bucket_by_length": bucket}})
    run_dir = tmp_path / str(bucket)
    inprocess.run(cfg, run_dir, progress=False)
    return read_rows(run_dir)


@pytest.mark.slow
def test_text_trains_and_bucketing_lowers_padding(tmp_path):
    plain, bucketed = _rows(tmp_path, False), _rows(tmp_path, True)
    for rows in (plain, bucketed):
        assert rows[0]["tokens_per_step"] is None and rows[0]["padding_fraction"] is None
        trained = rows[1:]
        assert all(0 <= r["padding_fraction"] < 1 and r["tokens_per_step"] > 8 for r in trained)
        # 4 clients × 48 sequences, B=8: 6 steps each; chance is 1/vocabulary (~1/30)
        assert all(r["steps"] == 12 for r in trained)
        assert rows[-1]["test_accuracy"] > 0.15
        assert rows[-1]["test_loss"] < rows[0]["test_loss"]
    for before, after in zip(plain[1:], bucketed[1:], strict=True):
        assert after["padding_fraction"] < before["padding_fraction"] / 2
        # the same sequences each round: the same real tokens, only their grouping differs
        assert after["tokens_per_step"] == pytest.approx(before["tokens_per_step"])


@pytest.mark.slow
def test_text_file_trains_from_the_command_line(tmp_path):
    lines = [f"line {i}: " + "abcab" * (1 + i % 7) for i in range(60)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    done = simulate(
        "data=text",
        f"data.path={corpus}",
        "model=gru",
        "model.width=16",
        "num_clients=3",
        "clients_per_round=3",
        "rounds=2",
        "client.batch_size=4",
        "client.epochs=1",
        "progress=off",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = read_rows(run_dir)
    assert rows[-1]["examples"] == 48  # 60 lines, 12 (ceil 0.2 · 60) held out
    assert rows[-1]["padding_fraction"] > 0
    assert rows[-1]["test_loss"] < rows[0]["test_loss"]
