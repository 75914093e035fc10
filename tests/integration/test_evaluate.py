"""`python -m fedbatch.evaluate`: a finished ResNet run's model on its own and other test sets,
checked against the file's weights run over the test tensors by hand."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.nn import functional as F

from fedbatch.config import DataConfig, ModelConfig
from fedbatch.data.datasets import load_dataset
from fedbatch.evaluate import main
from fedbatch.local.resnet import resnet
from tests.conftest import read_rows, simulate

pytestmark = pytest.mark.slow
SEED, SAMPLES = 4, 400
RUN = [
    f"seed={SEED}",
    "data=images",
    f"data.num_samples={SAMPLES}",
    "data.num_classes=2",
    "data.signal=0.3",  # hard enough that a 3-round model gets some wrong
    "model=resnet",
    "model.channels=[4,8]",
    "model.norm=batch",
    "rounds=3",
    "num_clients=4",
    "clients_per_round=2",
    "client.batch_size=16",
    "client.lr=0.3",
    "progress=off",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaluate") / "run"
    result = simulate(*RUN, f"hydra.run.dir={out}", cwd=out.parent)
    assert result.returncode == 0, result.stderr
    return out


def by_hand(run_dir: Path, test_fraction: float = 0.2, swap: bool = False):
    """Accuracy, loss and size of the file's ResNet on the images' test split, computed
    here: the weights loaded into a fresh ResNet, one forward pass over the test tensors."""
    model = resnet(ModelConfig(name="resnet", channels=(4, 8), kernel_size=3, norm="batch"),
                   (3, 32, 32), 2)  # fmt: skip
    missing, unexpected = model.load_state_dict(
        load_file(run_dir / "model.safetensors"), strict=False
    )
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    data = DataConfig(
        name="images", num_samples=SAMPLES, num_classes=2, signal=0.3, test_fraction=test_fraction
    )
    dataset = load_dataset(data, SEED)
    x, y = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    if swap:  # concept drift with two classes: the only derangement swaps the labels
        y = 1 - y
    with torch.no_grad():
        logits = model.eval()(x)
    correct = int((logits.argmax(dim=1) == y).sum())
    return correct / len(y), float(F.cross_entropy(logits, y)), len(y)


def _files(run_dir: Path) -> dict[str, str]:
    files = (p for p in run_dir.rglob("*") if p.is_file())
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_the_resnet_learns_the_images(run_dir):
    rows = read_rows(run_dir)
    assert rows[-1]["test_accuracy"] > max(0.7, rows[0]["test_accuracy"])
    assert rows[-1]["test_accuracy"] < 1  # the evaluations below tell right from wrong


def test_the_runs_own_test_set_gives_exactly_the_summarys_accuracy(run_dir, capsys):
    before = _files(run_dir)
    row = main([str(run_dir)])
    summary = json.loads((run_dir / "summary.json").read_text())
    accuracy, loss, n = by_hand(run_dir)
    assert row["test_accuracy"] == summary["test_accuracy"] == accuracy
    assert row["trained_on"] is None  # the run's own held-out set
    assert row["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert row["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert row["num_samples"] == n == math.ceil(0.2 * SAMPLES)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"fedbatch: {run_dir}/model.safetensors: test accuracy {accuracy:.4f}, loss "
        f"{row['test_loss']:.4f} on {n} samples → {run_dir}/evaluations.jsonl"
    ]
    after = _files(run_dir)  # one new file; the run's own are untouched
    assert after.pop("evaluations.jsonl") and after == before


def test_overrides_pick_another_test_set(run_dir):
    row = main([str(run_dir), "data.test_fraction=0.5"])
    accuracy, loss, n = by_hand(run_dir, test_fraction=0.5)
    assert (row["test_accuracy"], row["num_samples"]) == (accuracy, n)
    assert n == SAMPLES // 2
    # The split's order stays: the larger test set is the run's 80 and 120 it trained on.
    assert row["trained_on"] == SAMPLES // 2 - math.ceil(0.2 * SAMPLES) == 120
    assert row["test_loss"] == pytest.approx(loss, rel=1e-5)
    rows = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert rows[-1]["overrides"] == ["data.test_fraction=0.5"]


def test_a_drifted_test_set_swaps_two_classes(run_dir):
    drift = ["stream.name=constant", "stream.drift=concept", "stream.drift_at=0"]
    row = main([str(run_dir), *drift, "eval.follow_drift=true", "--at", "1"])
    plain, _, n = by_hand(run_dir)
    accuracy, loss, _ = by_hand(run_dir, swap=True)
    assert row["test_accuracy"] == accuracy
    assert round(row["test_accuracy"] * n) == n - round(plain * n)  # every answer flips
    assert row["test_loss"] == pytest.approx(loss, rel=1e-5)


def _refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    return lines[0].removeprefix("fedbatch: error: ")


def test_what_cannot_be_evaluated_is_one_line(run_dir, tmp_path, capsys):
    run = str(run_dir)
    assert _refused(capsys, run, "model.channels=[8,8]").startswith(
        "model.channels cannot be changed: model.safetensors holds the weights of the run's model"
    )
    assert _refused(capsys, run, "data.num_classes=3") == (
        "model.safetensors does not fit the model this config builds for data=images: 7.bias "
        "has shape [2] there, [3] here (an override changed the model's input or classes)"
    )
    assert _refused(capsys, run, "data.name=digits").startswith(
        "model='resnet' is invalid: allowed one of logreg, mlp, cnn1d with data=digits"
    )
    assert _refused(capsys, run, "data.test_fracton=0.5").startswith(
        "data.test_fracton is not a key of data: allowed alpha, beta, "
    )
    assert _refused(capsys, run, "stream.drift=concept", "eval.follow_drift=true").startswith(
        "stream.drift='concept' is invalid"
    )
    assert _refused(capsys, run, "stream.name=constant", "stream.drift=concept",
                    "stream.drift_at=0", "eval.follow_drift=true") == (
        "eval.follow_drift=true needs a virtual time and the run has none (no stream or "
        "clock): give one with --at SECONDS"
    )  # fmt: skip
    assert _refused(capsys, str(tmp_path / "nowhere")) == (
        f"{tmp_path}/nowhere is not a directory: name a fedbatch run directory"
    )
    assert _refused(capsys, str(tmp_path)) == (
        f"{tmp_path} holds no config.yaml: name a fedbatch run directory"
    )
    shutil.copy(run_dir / "config.yaml", tmp_path)
    assert _refused(capsys, str(tmp_path)) == (
        f"{tmp_path} holds no model.safetensors: the run has not ended (or was killed before "
        "writing it)"
    )
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["save"]["model"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert _refused(capsys, str(tmp_path)) == (
        f"{tmp_path} holds no model.safetensors: the run was started with save.model=false"
    )


def test_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### Evaluate a trained model\n", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^python -m fedbatch\.(simulate|evaluate) (.*)$", section, re.M)
    assert [module for module, _ in commands] == ["simulate"] + ["evaluate"] * 3
    # The run as written, smaller for suite time; the evaluations exactly as written.
    smaller = "rounds=1 model.channels=[4,8] progress=off"
    result = simulate(*shlex.split(f"{commands[0][1]} {smaller}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    monkeypatch.chdir(tmp_path)
    summary = json.loads((tmp_path / "runs/resnet/summary.json").read_text())
    rows = [main(shlex.split(arguments)) for _, arguments in commands[1:]]
    assert rows[0]["test_accuracy"] == summary["test_accuracy"]
    assert [row["num_samples"] for row in rows] == [200, 2000, 200]
    assert [row["trained_on"] for row in rows] == [None, 0, None]  # fresh images
    lines = capsys.readouterr().out.splitlines()
    assert all(
        line.startswith("fedbatch: runs/resnet/model.safetensors: test accuracy") for line in lines
    )
