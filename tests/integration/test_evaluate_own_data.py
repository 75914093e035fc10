"""`python -m fedbatch.evaluate` on another split of the user's own data: labels keep the
run's class indices (its classes count from its own train and test labels), and a label
the run never had is one line, not a silently renumbered class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from fedbatch.evaluate import main
from tests.conftest import simulate

pytestmark = pytest.mark.slow
CENTRES = {"a": (0.0, 3.0), "b": (3.0, 0.0), "c": (-3.0, 0.0), "d": (0.0, -3.0)}


def _split(labels: str, per_label: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    rows = [(label, *(np.array(CENTRES[label]) + rng.normal(size=2))) for label in labels
            for _ in range(per_label)]  # fmt: skip
    return {"kind": [r[0] for r in rows], "x1": [r[1] for r in rows], "x2": [r[2] for r in rows]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A logreg trained on labels b and c, tested on a, b and c: the run's classes are
    a=0, b=1, c=2. Split `other` holds b and c only, `unknown` b, c and d."""
    import datasets

    root = tmp_path_factory.mktemp("evaluate_own")
    splits = {"train": _split("bc", 30, 0), "test": _split("abc", 5, 1),
              "other": _split("bc", 8, 2), "unknown": _split("bcd", 4, 3)}  # fmt: skip
    datasets.DatasetDict(
        {k: datasets.Dataset.from_dict(v) for k, v in splits.items()}
    ).save_to_disk(str(root / "mine"))
    out = root / "run"
    run = ["data=hf", f"data.path={root / 'mine'}", "data.label=kind", "data.test_split=test",
           "model=logreg", "rounds=2", "num_clients=2", "clients_per_round=2", "progress=off",
           f"hydra.run.dir={out}"]  # fmt: skip
    result = simulate(*run, cwd=root)
    assert result.returncode == 0, result.stderr
    return out


def test_another_split_is_scored_with_the_runs_class_indices(run_dir, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    row = main([str(run_dir), "data.test_split=other"])
    # By hand: the file's weights on the split's (x1, x2), with b=1 and c=2 as in the run
    # (the split alone would number them b=0, c=1 and build a 2-class model).
    weights = load_file(run_dir / "model.safetensors")
    other = _split("bc", 8, 2)
    x = torch.tensor(np.stack([other["x1"], other["x2"]], axis=1), dtype=torch.float32)
    y = torch.tensor([{"b": 1, "c": 2}[k] for k in other["kind"]])
    logits = x @ weights["1.weight"].T + weights["1.bias"]
    assert row["num_samples"] == 16
    assert row["test_accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert row["test_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert row["test_accuracy"] > 0.9  # b and c lie 6 apart: the run learned them


def test_a_label_the_run_never_had_is_one_line(run_dir, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SystemExit) as stop:
        main([str(run_dir), "data.test_split=unknown"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "1 label(s) the run never had ('d')" in line
    assert "the run's classes are 'a', 'b', 'c'" in line
