"""The ServerApp's Flower run config: which fedbatch config a `flwr run` trains.

Four keys, declared with their defaults in `pyproject.toml` (`[tool.flwr.app.config]`;
Flower drops a `--run-config` key that is not declared there):

- `fedbatch-config`: a whole resolved config as JSON. `engine=deployment` sends this,
  having composed the config on the submitting machine, where a study's `--config-dir`
  lies.
- `overrides`: Hydra overrides of the packaged config, as on a command line, for `flwr run`
  by hand: `flwr run . --run-config "overrides='rounds=3 client.batch_size=16'"`.
- `output-dir`: where the ServerApp writes `metrics.jsonl`, `summary.json`, its checkpoints
  and the final model (`engine.shared_dir=true` sends the run directory itself).
- `resume`: continue from `output-dir`'s checkpoint (`resume=<run dir>` sends it).

With `fedbatch-config` empty (pyproject's default), the ServerApp composes the packaged
config itself, `engine=deployment` first, then `overrides`: under `flwr run` it always
sits behind a SuperLink, whether its SuperNodes are simulated or real. So
`flwr run . --run-config "overrides='X'"` trains what `python -m fedbatch.simulate
engine=deployment X` sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fedbatch.config import RunConfig, config_from_json
from fedbatch.config.compose import OverrideError, compose_config, split_overrides

CONFIG_KEY = "fedbatch-config"
OVERRIDES_KEY = "overrides"
OUTPUT_KEY = "output-dir"
RESUME_KEY = "resume"
BASE_OVERRIDES = ("engine=deployment",)  # what every `flwr run` composition starts from


def config_from_run_config(run_config: Mapping[str, object]) -> RunConfig:
    """The run's config: the JSON in `fedbatch-config`, else the packaged config with
    `overrides`. A bad override or value raises OverrideError or ConfigError (one line)."""
    whole = str(run_config.get(CONFIG_KEY, "") or "")
    overrides = str(run_config.get(OVERRIDES_KEY, "") or "")
    if whole and overrides.strip():
        raise OverrideError(
            f"{OVERRIDES_KEY}={overrides!r} is invalid: {CONFIG_KEY} already holds a whole "
            f"config; give one of the two"
        )
    if whole:
        return config_from_json(whole)
    return compose_config([*BASE_OVERRIDES, *split_overrides(overrides)])


def output_dir(run_config: Mapping[str, object]) -> Path | None:
    """`output-dir`, if set."""
    value = str(run_config.get(OUTPUT_KEY, "") or "")
    return Path(value) if value else None


def resuming(run_config: Mapping[str, object]) -> bool:
    """Whether the run continues from `output-dir`'s checkpoint."""
    return run_config.get(RESUME_KEY) is True
