"""`python -m fedbatch.evaluate` on a text run with another corpus: the characters keep
the run's ids (its vocabulary), checked against the file's GRU run by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from fedbatch.config import ModelConfig
from fedbatch.evaluate import main
from fedbatch.local.sequence_models import gru
from tests.conftest import simulate

pytestmark = pytest.mark.slow
RUN_LINES = [("abc" * (1 + i % 3))[i % 3 :] + "b" * (i % 2) for i in range(30)]  # a, b, c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("evaluate_text")
    corpus = where / "run.txt"
    corpus.write_text("\n".join(RUN_LINES) + "\n", encoding="utf-8")
    out = where / "run"
    result = simulate(
        "data=text", f"data.path={corpus}", "model=gru", "model.width=8", "rounds=1",
        "num_clients=2", "clients_per_round=2", "client.batch_size=4", "progress=off",
        f"hydra.run.dir={out}", cwd=where,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def test_other_text_keeps_the_runs_character_ids(run_dir, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("acca\n" * 20, encoding="utf-8")  # its own vocabulary: a=2, c=3
    row = main([str(run_dir), f"data.path={other}"])
    # by hand, the run's vocabulary: PAD 0, BOUNDARY 1, a=2, b=3, c=4
    model = gru(ModelConfig(name="gru", width=8), (1,), 5).eval()
    model.load_state_dict(load_file(run_dir / "model.safetensors"))
    inputs, targets = torch.tensor([[1, 2, 4, 4, 2]]), torch.tensor([[2, 4, 4, 2, 1]])
    with torch.no_grad():
        logits = model(inputs)
    correct = int((logits.argmax(dim=1) == targets).sum())
    assert row["num_samples"] == 4  # every row "acca": ceil(0.2 · 20) held out
    assert row["test_accuracy"] == pytest.approx(correct / 5)
    assert row["test_loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-5)
    assert row["trained_on"] == 0


def test_characters_outside_the_vocabulary_are_one_line(run_dir, tmp_path, capsys):
    other = tmp_path / "unknown.txt"
    other.write_text("abz\nzéa\n" * 5, encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main([str(run_dir), f"data.path={other}"])
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "2 character(s) outside it ('z' 'é')" in lines[0], lines[0]


def test_the_model_file_carries_its_vocabulary(run_dir, tmp_path):
    from safetensors import safe_open

    with safe_open(str(run_dir / "model.safetensors"), framework="pt") as file:
        header = file.metadata()
    assert header["vocabulary"] == '["a", "b", "c"]'
    assert int(header["row_width"]) == max(len(line) for line in RUN_LINES) + 1


def test_a_changed_corpus_file_does_not_renumber_the_characters(run_dir, tmp_path):
    from fedbatch.data.datasets import _load_cached

    other = tmp_path / "other.txt"
    other.write_text("acca\n" * 20, encoding="utf-8")
    corpus = run_dir.parent / "run.txt"
    before = main([str(run_dir), f"data.path={other}"])
    original = corpus.read_text(encoding="utf-8")
    corpus.write_text("0\n" + original, encoding="utf-8")  # rebuilt, it would make a=3
    _load_cached.cache_clear()
    try:
        assert main([str(run_dir), f"data.path={other}"]) == before
    finally:
        corpus.write_text(original, encoding="utf-8")
        _load_cached.cache_clear()


def test_its_own_corpus_changed_since_keeps_the_runs_numbering(run_dir):
    """The run's own config after its file lost every 'a': rebuilt, the vocabulary
    would shrink to b=2, c=3 (a model that no longer fits); saved, b and c keep 3 and 4."""
    from fedbatch.data.datasets import _load_cached

    corpus = run_dir.parent / "run.txt"
    original = corpus.read_text(encoding="utf-8")
    corpus.write_text("bcbc\ncbb\n" * 10, encoding="utf-8")
    _load_cached.cache_clear()
    try:
        row = main([str(run_dir)])
    finally:
        corpus.write_text(original, encoding="utf-8")
        _load_cached.cache_clear()
    model = gru(ModelConfig(name="gru", width=8), (1,), 5).eval()
    model.load_state_dict(load_file(run_dir / "model.safetensors"))
    rows = {  # by hand, in the run's ids (b=3, c=4): (inputs, targets) of each line
        "bcbc": ([1, 3, 4, 3, 4], [3, 4, 3, 4, 1]),
        "cbb": ([1, 4, 3, 3], [4, 3, 3, 1]),
    }
    correct = {}
    with torch.no_grad():
        for line, (inputs, targets) in rows.items():
            logits = model(torch.tensor([inputs]))
            correct[line] = int((logits.argmax(dim=1) == torch.tensor([targets])).sum())
    # 4 of the 20 rows are held out, k of them "bcbc" (5 tokens) and 4 - k "cbb" (4)
    possible = [
        (k * correct["bcbc"] + (4 - k) * correct["cbb"]) / (5 * k + 4 * (4 - k)) for k in range(5)
    ]
    assert row["num_samples"] == 4 and row["trained_on"] is None
    assert any(row["test_accuracy"] == pytest.approx(value) for value in possible)
