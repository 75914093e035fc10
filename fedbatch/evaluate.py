"""`python -m fedbatch.evaluate <run dir> [key=value ...] [--at SECONDS]`: the test loss and
accuracy of a run's final model (`model.safetensors`) on the test set of the run's config,
or of that config with overrides (another test fraction or seed, a drifted test set, ...).

The overrides are `key=value` pairs applied to the run's `config.yaml`, in the command
line's syntax. The model's section cannot change (the file holds that model's weights),
and an override elsewhere that builds another model (`data.num_classes`, data of another
input shape) is refused when the file does not fit it. The test set is the one the run's
server evaluates on (`ServerEvaluation`); with `eval.follow_drift=true` it drifts as the
stream does at the run's end (`summary.json`'s `virtual_seconds`), or at `--at` seconds.
On other data than the run's, the row also counts the test samples the run trained on
(another split can hold them).

Prints one line and appends one row to `evaluations.jsonl` in the run directory; no other
file of the run is touched. Bad input is one line and exit 2.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from fedbatch.config import ConfigError, RunConfig, build_config
from fedbatch.config.compose import OverrideError
from fedbatch.config.sections import FILE_DATASETS
from fedbatch.run_dir import CONFIG, MODEL_FILE, SUMMARY
from fedbatch.simulate import fail

if TYPE_CHECKING:
    from fedbatch.data.datasets import Dataset
    from fedbatch.federated.workload import Workload

EVALUATIONS = "evaluations.jsonl"
FIXED_SECTION = "model"  # what the weights in the file were trained as
ALLOWED = "key=value pairs of the run's config.yaml, one value each"


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config, once `run_dir` is known to hold a final model."""
    if not (run_dir / CONFIG).is_file():
        what = "holds no config.yaml" if run_dir.is_dir() else "is not a directory"
        raise OverrideError(f"{run_dir} {what}: name a fedbatch run directory")
    raw = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise OverrideError(f"{run_dir / CONFIG} is not a fedbatch config (not a mapping)")
    if not (run_dir / MODEL_FILE).is_file():
        saved = (raw.get("save") or {}).get("model", True)
        why = "the run has not ended (or was killed before writing it)"
        raise OverrideError(
            f"{run_dir} holds no {MODEL_FILE}: "
            + ("the run was started with save.model=false" if saved is False else why)
        )
    return raw


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`raw` with each `key=value` set (values parsed as Hydra parses them); a key the
    config does not have, a whole section, or a key of the model: OverrideError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    config = copy.deepcopy(dict(raw))
    for given in overrides:
        try:
            (override,) = OverridesParser.create().parse_overrides([given])
        except HydraException as error:
            reason = str(error).strip().splitlines()[0]
            raise OverrideError(f"{given!r} is invalid: {reason}") from None
        plain = not given.startswith(("+", "~")) and not override.is_hydra_override()
        if not plain or override.is_sweep_override():
            raise OverrideError(f"{given!r} is invalid: allowed {ALLOWED}")
        key, value = override.key_or_group, override.value()
        if key.partition(".")[0] == FIXED_SECTION:
            raise OverrideError(
                f"{key} cannot be changed: {MODEL_FILE} holds the weights of the run's "
                "model; override its data or evaluation instead"
            )
        section, name = _parent(config, key)
        if isinstance(section[name], dict):
            raise OverrideError(
                f"{given} would replace the section {key}: set its keys, e.g. {key}.name={value}"
            )
        section[name] = value
    return config


def _parent(config: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """The section of `config` that holds `key`, and the key's last part."""
    parts = key.split(".")
    section = config
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the run's config"
        if part not in section:
            allowed = ", ".join(sorted(section))
            raise OverrideError(
                f"{'.'.join(parts[: depth + 1])} is not a key of {where}: allowed {allowed}"
            )
        if depth == len(parts) - 1:
            break
        if not isinstance(section[part], dict):
            raise OverrideError(f"{key} is not a key: {'.'.join(parts[: depth + 1])} is a value")
        section = section[part]
    return section, parts[-1]


def evaluate_run(
    run_dir: Path, cfg: RunConfig, run: RunConfig, at: float | None = None
) -> dict[str, Any]:
    """Loss, accuracy and size of the test set `cfg` makes, for the model in the file of
    the run whose config is `run`; with other data than the run's, also how many of its
    samples the run trained on (`trained_on`; null for the run's own held-out set)."""
    import torch

    from fedbatch.data.datasets import load_dataset
    from fedbatch.federated.checkpoint import load_model_file
    from fedbatch.federated.evaluation import ServerEvaluation
    from fedbatch.federated.records import state_to_arrays
    from fedbatch.federated.workload import build_workload
    from fedbatch.local.trainer import evaluate

    workload = build_workload(cfg)
    own = (cfg.data, cfg.seed) == (run.data, run.seed)
    if not own and cfg.data.name in FILE_DATASETS:
        _use_run_classes(workload, load_dataset(run.data, run.seed))
    if cfg.data.name == "text":  # its own corpus too: the file may have changed since
        _use_run_vocabulary(workload, run, run_dir / MODEL_FILE)
    evaluation = ServerEvaluation(workload)
    model = evaluation.model
    found = load_model_file(run_dir / MODEL_FILE)
    expected = {k: tuple(a.shape) for k, a in state_to_arrays(model.state_dict()).items()}
    _check_fits({k: tuple(t.shape) for k, t in found.items()}, expected, cfg)
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in found.items():
            state[key].copy_(tensor)
    if at is None and cfg.eval.follow_drift:
        at = _run_end(run_dir)
    x, y = evaluation.test_set(at)
    loss, accuracy = evaluate(model, x, y, cfg.eval.batch_size)
    trained_on = None if own else _trained_on(run, workload.x_test.cpu().numpy())
    return {
        "test_accuracy": accuracy,
        "test_loss": loss,
        "num_samples": len(y),
        "trained_on": trained_on,
    }


def _use_run_classes(workload: Workload, trained: Dataset) -> None:
    """The user's own data numbers its classes from the labels it holds (sorted, over
    train and test): other data can number them otherwise. Its test labels become the
    run's class indices; a label the run never had is refused."""
    import torch

    data = workload.dataset
    known = trained.class_values or tuple(range(trained.num_classes))
    labels = data.class_values or tuple(range(data.num_classes))
    index = {label: i for i, label in enumerate(known)}
    present = np.unique(data.y_test)
    unknown = [labels[i] for i in present if labels[i] not in index]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise OverrideError(
            f"data.label: the test set holds {len(unknown)} label(s) the run never had "
            f"({shown}); the run's classes are {', '.join(map(repr, known))}"
        )
    to_run = np.full(len(labels), -1, dtype=np.int64)
    for i in present:
        to_run[i] = index[labels[i]]
    y_test = to_run[data.y_test]
    workload.dataset = replace(data, y_test=y_test, num_classes=trained.num_classes,
                               class_values=trained.class_values)  # fmt: skip
    workload.y_test = torch.as_tensor(y_test, device=workload.y_test.device)


def _use_run_vocabulary(workload: Workload, run: RunConfig, model_file: Path) -> None:
    """Text numbers characters from the corpus it reads: other text would number them
    otherwise. It is encoded with the run's vocabulary (saved in the model file's header;
    rebuilt from the run's own corpus for a model saved without it) and row width instead;
    a character outside it is refused (ConfigError)."""
    import torch

    from fedbatch.data.text import text_in_vocabulary

    vocab, width = _run_vocabulary(run, model_file)
    cfg = workload.cfg
    x_train, y_train, x_test, y_test, vocab_size = text_in_vocabulary(
        cfg.data, cfg.seed, vocab, width
    )
    workload.dataset = replace(
        workload.dataset, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        num_classes=vocab_size, input_shape=(width,),
    )  # fmt: skip
    device = workload.y_test.device
    workload.x_test = torch.as_tensor(x_test, device=device)
    workload.y_test = torch.as_tensor(y_test, device=device)


def _run_vocabulary(run: RunConfig, model_file: Path) -> tuple[dict[str, int], int]:
    """The run's char → id mapping and row width (the model's input length)."""
    from fedbatch.data.datasets import load_dataset
    from fedbatch.data.text import SPECIAL_TOKENS, run_vocabulary
    from fedbatch.federated.checkpoint import model_file_metadata
    from fedbatch.federated.saving import VOCABULARY_KEY, WIDTH_KEY

    header = model_file_metadata(model_file)
    if VOCABULARY_KEY not in header:
        return run_vocabulary(run.data, run.seed), load_dataset(run.data, run.seed).input_shape[0]
    chars = json.loads(header[VOCABULARY_KEY])
    return {char: SPECIAL_TOKENS + i for i, char in enumerate(chars)}, int(header[WIDTH_KEY])


def _trained_on(run: RunConfig, x: np.ndarray) -> int:
    """How many rows of `x` (undrifted samples) are, byte for byte, a training sample of
    the run: another split or seed can put them in a test set."""
    from fedbatch.data.datasets import load_dataset

    def digest(row: np.ndarray) -> bytes:
        return hashlib.blake2b(row.tobytes(), digest_size=16).digest()

    trained = {digest(row) for row in load_dataset(run.data, run.seed).x_train}
    return sum(digest(row) in trained for row in x)


def _check_fits(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], cfg: RunConfig
) -> None:
    if found == expected:
        return
    differing = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if differing:
        key = differing[0]
        detail = f"{key} has shape {list(found[key])} there, {list(expected[key])} here"
    else:
        detail = f"{sorted(expected.keys() ^ found.keys())[0]} is in one of them only"
    raise OverrideError(
        f"{MODEL_FILE} does not fit the model this config builds for data={cfg.data.name}: "
        f"{detail} (an override changed the model's input or classes)"
    )


def _run_end(run_dir: Path) -> float:
    """The virtual time the run ended at, where its drift is evaluated by default."""
    summary = run_dir / SUMMARY
    seconds = json.loads(summary.read_text())["virtual_seconds"] if summary.is_file() else None
    if seconds is None:
        raise OverrideError(
            "eval.follow_drift=true needs a virtual time and the run has none (no stream "
            "or clock): give one with --at SECONDS"
        )
    return float(seconds)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fedbatch.evaluate",
        description="Evaluate a run's final model (model.safetensors) on a test set.",
    )
    parser.add_argument("run_dir", type=Path, help="a finished run's directory")
    parser.add_argument("overrides", nargs="*", help="key=value changes to its config.yaml")
    parser.add_argument("--at", type=float, help="virtual seconds of a drifting test set")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate, print one line, append the row to evaluations.jsonl and return it."""
    args = parse_args(argv)
    run_dir: Path = args.run_dir
    try:
        raw = run_config(run_dir)
        cfg = build_config(apply_overrides(raw, args.overrides))
        result = evaluate_run(run_dir, cfg, build_config(raw), args.at)
    except (OverrideError, ConfigError) as error:
        fail(str(error))
        raise AssertionError("unreachable") from None
    row = {"model": MODEL_FILE, "overrides": list(args.overrides), "at": args.at} | result
    trained_on = result["trained_on"]
    seen = "" if trained_on is None else f" ({trained_on} of them in the run's training data)"
    with (run_dir / EVALUATIONS).open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
    print(
        f"fedbatch: {run_dir / MODEL_FILE}: test accuracy {result['test_accuracy']:.4f}, "
        f"loss {result['test_loss']:.4f} on {result['num_samples']} samples{seen} "
        f"→ {run_dir / EVALUATIONS}"
    )
    return row


if __name__ == "__main__":
    main()
